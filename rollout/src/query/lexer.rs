//! Test-only: how Prometheus reads a query's string literals, written from its lexer
//! (`promql/parser/lex.go`: `lexString`, `lexRawString`, `lexEscape`) and `strconv.Unquote`,
//! independently of the escaping under test. A query is split into the text outside string
//! literals and the literals' values, so a test can assert both the query's shape and what each
//! literal means.
#![allow(clippy::panic)]

/// A query split at its string literals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lexed {
    /// The query with every string literal replaced by `$`.
    pub shape: String,
    /// The literals' values, in order.
    pub strings: Vec<String>,
}

/// Splits `query` as Prometheus reads it; `Err` where Prometheus would refuse it.
pub fn lex(query: &str) -> Result<Lexed, String> {
    let mut shape = String::new();
    let mut strings = Vec::new();
    let mut chars = query.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                strings.push(quoted(&mut chars, c)?);
                shape.push('$');
            }
            '`' => {
                let raw: String = chars.by_ref().take_while(|&c| c != '`').collect();
                strings.push(raw);
                shape.push('$');
            }
            c => shape.push(c),
        }
    }
    Ok(Lexed { shape, strings })
}

fn quoted(chars: &mut std::str::Chars<'_>, open: char) -> Result<String, String> {
    let mut value = String::new();
    loop {
        match chars.next() {
            None | Some('\n') => return Err("unterminated quoted string".into()),
            Some('\u{fffd}') => return Err("invalid UTF-8 rune".into()),
            Some('\\') => value.push(escape(chars, open)?),
            Some(c) if c == open => return Ok(value),
            Some(c) => value.push(c),
        }
    }
}

fn escape(chars: &mut std::str::Chars<'_>, open: char) -> Result<char, String> {
    let c = chars.next().ok_or("escape sequence not terminated")?;
    let (digits, base) = match c {
        'a' => return Ok('\u{7}'),
        'b' => return Ok('\u{8}'),
        'f' => return Ok('\u{c}'),
        'n' => return Ok('\n'),
        'r' => return Ok('\r'),
        't' => return Ok('\t'),
        'v' => return Ok('\u{b}'),
        '\\' => return Ok('\\'),
        c if c == open => return Ok(c),
        '0'..='7' => (2, 8),
        'x' => (2, 16),
        'u' => (4, 16),
        'U' => (8, 16),
        other => return Err(format!("unknown escape sequence {other:?}")),
    };
    let mut text = if base == 8 {
        c.to_string()
    } else {
        String::new()
    };
    for _ in 0..digits {
        text.push(chars.next().ok_or("escape sequence not terminated")?);
    }
    let code = u32::from_str_radix(&text, base).map_err(|e| e.to_string())?;
    char::from_u32(code).ok_or_else(|| "escape sequence is an invalid Unicode code point".into())
}

#[test]
fn reads_literals_as_prometheus_does() {
    let lexed = lex(r#"x{a="q\"}\\",b='s\'"',c=`r\n`}"#).unwrap();
    assert_eq!(lexed.shape, "x{a=$,b=$,c=$}");
    assert_eq!(lexed.strings, ["q\"}\\", "s'\"", "r\\n"]);
    assert_eq!(lex(r#""\ufffd\x41\101""#).unwrap().strings, ["\u{fffd}AA"]);
    for refused in [
        "\"a",
        "\"a\nb\"",
        "\"\u{fffd}\"",
        r#""\.""#,
        r#""\'""#,
        r#"'\"'"#,
    ] {
        assert!(lex(refused).is_err(), "{refused:?}");
    }
}
