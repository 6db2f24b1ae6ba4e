//! Reading the config's JSON: a small parser into [`Value`], and a reader that takes a
//! document apart field by field, so every type error names its field.
//!
//! The filter parses its config with these instead of `serde_json` and serde's derived
//! deserializers: they keep the field path in every message and keep the .wasm small (no
//! generic deserializer code, no float parsing or formatting, no map type for objects).
//!
//! [`parse`] accepts exactly the documents `serde_json::from_slice::<serde_json::Value>` accepts
//! (RFC 8259 JSON, nesting up to 127 levels, numbers that fit an `f64`, strings that are UTF-8
//! with paired surrogate escapes) and reads them to the same value: an object keeps the last of
//! duplicate keys and iterates in key order. The `config` fuzz target checks this against
//! `serde_json`.

use std::fmt;

use crate::config::ConfigError;
use crate::sort::stable_order;

/// A JSON value.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Value {
    /// `null`
    #[default]
    Null,
    /// `true` or `false`
    Bool(bool),
    /// A number.
    Number(Number),
    /// A string, unescaped.
    String(String),
    /// A list.
    Array(Vec<Value>),
    /// An object.
    Object(Object),
}

/// A JSON number, kept in the three forms `serde_json` reads numbers into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Number {
    /// A whole number from 0 to `u64::MAX`, written without fraction or exponent.
    Whole(u64),
    /// A negative whole number from `i64::MIN` to -1, written without fraction or exponent.
    Negative(i64),
    /// Any other number: `(-1 if negative) × significand × 10^exponent`, as `serde_json` would
    /// compute it in floating point (it is finite; digits past the 64-bit significand are
    /// dropped). The filter never needs its value, so it is not computed.
    Float {
        /// Whether a minus sign came first.
        negative: bool,
        /// The leading decimal digits that fit a `u64`.
        significand: u64,
        /// The power of ten to multiply the significand by.
        exponent: i32,
    },
}

/// A JSON object: its entries sorted by key, each key once (the last one written wins).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Object(Vec<(String, Value)>);

impl Object {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let index = self.0.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok()?;
        self.0.get(index).map(|(_, value)| value)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.0.iter().map(|(key, value)| (key, value))
    }
}

impl<'a> IntoIterator for &'a Object {
    type Item = (&'a String, &'a Value);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, Value)>,
        fn(&'a (String, Value)) -> (&'a String, &'a Value),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(key, value)| (key, value))
    }
}

impl Value {
    /// The number, if it is a whole number from 0 to `u64::MAX` written without fraction or
    /// exponent (like `serde_json::Value::as_u64`).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Number(Number::Whole(n)) => Some(*n),
            _ => None,
        }
    }
}

/// Why a document is not JSON, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    problem: &'static str,
    line: usize,
    column: usize,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at line {} column {}",
            self.problem, self.line, self.column
        )
    }
}

impl std::error::Error for Error {}

/// Parses one JSON document (surrounding whitespace allowed).
pub fn parse(document: &[u8]) -> Result<Value, Error> {
    let mut parser = Parser {
        bytes: document,
        at: 0,
        depth_left: 128,
    };
    let value = parser.value()?;
    match parser.skip_whitespace() {
        None => Ok(value),
        Some(_) => Err(parser.error("trailing characters")),
    }
}

/// `10^289` to `10^308`: the powers of ten a whole significand can overflow an `f64` with.
const POW10_FROM_289: [f64; 20] = [
    1e289, 1e290, 1e291, 1e292, 1e293, 1e294, 1e295, 1e296, 1e297, 1e298, 1e299, 1e300, 1e301,
    1e302, 1e303, 1e304, 1e305, 1e306, 1e307, 1e308,
];

struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
    /// `serde_json`'s recursion limit: a list or object at depth 128 is refused.
    depth_left: u8,
}

/// Whether `n * 10 + digit` exceeds `max`.
fn overflows<T: Copy + PartialOrd + std::ops::Div<Output = T> + std::ops::Rem<Output = T>>(
    n: T,
    digit: T,
    max: T,
    ten: T,
) -> bool {
    n >= max / ten && (n > max / ten || digit > max % ten)
}

impl Parser<'_> {
    fn error(&self, problem: &'static str) -> Error {
        let before = self.bytes.get(..self.at).unwrap_or(self.bytes);
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |newline| newline + 1);
        Error {
            problem,
            line: 1 + before.iter().filter(|&&b| b == b'\n').count(),
            column: self.at - line_start + 1,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn peek_digit(&self) -> Option<u8> {
        self.peek().filter(u8::is_ascii_digit).map(|b| b - b'0')
    }

    /// Skips whitespace; the next byte, not consumed.
    fn skip_whitespace(&mut self) -> Option<u8> {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.at += 1;
        }
        self.peek()
    }

    fn value(&mut self) -> Result<Value, Error> {
        Ok(match self.skip_whitespace() {
            None => return Err(self.error("EOF while parsing a value")),
            Some(b'n') => self.word(b"null", Value::Null)?,
            Some(b't') => self.word(b"true", Value::Bool(true))?,
            Some(b'f') => self.word(b"false", Value::Bool(false))?,
            Some(b'"') => Value::String(self.string()?),
            Some(b'-') => {
                self.at += 1;
                Value::Number(self.number(false)?)
            }
            Some(b'0'..=b'9') => Value::Number(self.number(true)?),
            Some(b'[') => Value::Array(self.nested(Self::array)?),
            Some(b'{') => Value::Object(self.nested(Self::object)?),
            Some(_) => return Err(self.error("expected value")),
        })
    }

    fn word(&mut self, word: &[u8], value: Value) -> Result<Value, Error> {
        for &want in word {
            match self.next() {
                None => return Err(self.error("EOF while parsing a value")),
                Some(got) if got != want => return Err(self.error("expected ident")),
                Some(_) => {}
            }
        }
        Ok(value)
    }

    fn nested<T>(&mut self, read: fn(&mut Self) -> Result<T, Error>) -> Result<T, Error> {
        self.depth_left -= 1;
        if self.depth_left == 0 {
            return Err(self.error("recursion limit exceeded"));
        }
        self.at += 1;
        let value = read(self)?;
        self.depth_left += 1;
        Ok(value)
    }

    /// After `[`.
    fn array(&mut self) -> Result<Vec<Value>, Error> {
        let mut items = Vec::new();
        if self.skip_whitespace() == Some(b']') {
            self.at += 1;
            return Ok(items);
        }
        loop {
            items.push(self.value()?);
            match self.skip_whitespace() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(items);
                }
                Some(_) => return Err(self.error("expected `,` or `]`")),
                None => return Err(self.error("EOF while parsing a list")),
            }
            if self.skip_whitespace() == Some(b']') {
                return Err(self.error("trailing comma"));
            }
        }
    }

    /// After `{`.
    fn object(&mut self) -> Result<Object, Error> {
        let mut entries: Vec<(String, Value)> = Vec::new();
        if self.skip_whitespace() == Some(b'}') {
            self.at += 1;
            return Ok(Object(entries));
        }
        loop {
            match self.skip_whitespace() {
                Some(b'"') => {}
                Some(_) => return Err(self.error("key must be a string")),
                None => return Err(self.error("EOF while parsing an object")),
            }
            let key = self.string()?;
            match self.skip_whitespace() {
                Some(b':') => self.at += 1,
                Some(_) => return Err(self.error("expected `:`")),
                None => return Err(self.error("EOF while parsing an object")),
            }
            entries.push((key, self.value()?));
            match self.skip_whitespace() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    break;
                }
                Some(_) => return Err(self.error("expected `,` or `}`")),
                None => return Err(self.error("EOF while parsing an object")),
            }
            if self.skip_whitespace() == Some(b'}') {
                return Err(self.error("trailing comma"));
            }
        }
        // Key order, and of equal keys the last written, like a map filled in document order.
        let keys: Vec<&str> = entries.iter().map(|(key, _)| key.as_str()).collect();
        let key = |i: usize| keys.get(i);
        let order = stable_order(&keys);
        let mut keep = Vec::with_capacity(order.len());
        for (n, &i) in order.iter().enumerate() {
            let shadowed = order.get(n + 1).is_some_and(|&next| key(next) == key(i));
            if !shadowed {
                keep.push(i);
            }
        }
        let mut sorted = Vec::with_capacity(keep.len());
        for i in keep {
            if let Some(entry) = entries.get_mut(i) {
                sorted.push(std::mem::take(entry));
            }
        }
        Ok(Object(sorted))
    }

    /// At `"`.
    fn string(&mut self) -> Result<String, Error> {
        self.at += 1;
        let mut out = Vec::new();
        loop {
            match self.next() {
                None => return Err(self.error("EOF while parsing a string")),
                Some(b'"') => break,
                Some(b'\\') => self.escape(&mut out)?,
                Some(0..=0x1f) => {
                    return Err(self
                        .error("control character (\\u0000-\\u001F) found while parsing a string"))
                }
                Some(byte) => out.push(byte),
            }
        }
        String::from_utf8(out).map_err(|_| self.error("invalid unicode code point"))
    }

    /// After `\`.
    fn escape(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        let byte = match self.next() {
            None => return Err(self.error("EOF while parsing a string")),
            Some(b'"') => b'"',
            Some(b'\\') => b'\\',
            Some(b'/') => b'/',
            Some(b'b') => 0x08,
            Some(b'f') => 0x0c,
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b't') => b'\t',
            Some(b'u') => {
                let mut code = u32::from(self.hex4()?);
                if (0xDC00..=0xDFFF).contains(&code) {
                    return Err(self.error("lone leading surrogate in hex escape"));
                }
                if (0xD800..=0xDBFF).contains(&code) {
                    if self.next() != Some(b'\\') || self.next() != Some(b'u') {
                        return Err(self.error("unexpected end of hex escape"));
                    }
                    let low = u32::from(self.hex4()?);
                    if !(0xDC00..=0xDFFF).contains(&low) {
                        return Err(self.error("lone leading surrogate in hex escape"));
                    }
                    code = 0x1_0000 + ((code - 0xD800) << 10 | (low - 0xDC00));
                }
                let Some(c) = char::from_u32(code) else {
                    return Err(self.error("invalid unicode code point"));
                };
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                return Ok(());
            }
            Some(_) => return Err(self.error("invalid escape")),
        };
        out.push(byte);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u16, Error> {
        let Some(digits) = self.bytes.get(self.at..self.at + 4) else {
            self.at = self.bytes.len();
            return Err(self.error("EOF while parsing a string"));
        };
        self.at += 4;
        let mut n = 0u16;
        for &digit in digits {
            let value = match digit {
                b'0'..=b'9' => digit - b'0',
                b'a'..=b'f' => digit - b'a' + 10,
                b'A'..=b'F' => digit - b'A' + 10,
                _ => return Err(self.error("invalid escape")),
            };
            n = n << 4 | u16::from(value);
        }
        Ok(n)
    }

    // Numbers follow serde_json's reading step by step (`Deserializer::parse_integer` and the
    // functions it calls, without its `float_roundtrip` feature), so that the same documents
    // are refused as out of range.

    /// After the optional `-`.
    fn number(&mut self, positive: bool) -> Result<Number, Error> {
        let mut significand = match self.next() {
            None => return Err(self.error("EOF while parsing a value")),
            Some(b'0') => {
                if self.peek_digit().is_some() {
                    return Err(self.error("invalid number"));
                }
                0
            }
            Some(first @ b'1'..=b'9') => u64::from(first - b'0'),
            Some(_) => return Err(self.error("invalid number")),
        };
        while let Some(digit) = self.peek_digit() {
            if overflows(significand, u64::from(digit), u64::MAX, 10) {
                return self.long_integer(positive, significand);
            }
            self.at += 1;
            significand = significand * 10 + u64::from(digit);
        }
        match self.peek() {
            Some(b'.') => self.decimal(positive, significand, 0),
            Some(b'e' | b'E') => self.exponent(positive, significand, 0),
            _ if positive => Ok(Number::Whole(significand)),
            _ => match (significand as i64).wrapping_neg() {
                // `-0` and values below i64::MIN are floats.
                0.. => Ok(Number::Float {
                    negative: true,
                    significand,
                    exponent: 0,
                }),
                negative => Ok(Number::Negative(negative)),
            },
        }
    }

    /// The digits of a whole number past the 64-bit significand only count in the exponent.
    fn long_integer(&mut self, positive: bool, significand: u64) -> Result<Number, Error> {
        let mut exponent = 0i32;
        loop {
            match self.peek() {
                Some(b'0'..=b'9') => {
                    self.at += 1;
                    exponent = exponent.wrapping_add(1);
                }
                Some(b'.') => return self.decimal(positive, significand, exponent),
                Some(b'e' | b'E') => return self.exponent(positive, significand, exponent),
                _ => return self.float(positive, significand, exponent),
            }
        }
    }

    /// At `.`.
    fn decimal(
        &mut self,
        positive: bool,
        mut significand: u64,
        before: i32,
    ) -> Result<Number, Error> {
        self.at += 1;
        let mut after = 0i32;
        while let Some(digit) = self.peek_digit() {
            if overflows(significand, u64::from(digit), u64::MAX, 10) {
                // Further digits are dropped.
                while self.peek_digit().is_some() {
                    self.at += 1;
                }
                let exponent = before.wrapping_add(after);
                return match self.peek() {
                    Some(b'e' | b'E') => self.exponent(positive, significand, exponent),
                    _ => self.float(positive, significand, exponent),
                };
            }
            self.at += 1;
            significand = significand * 10 + u64::from(digit);
            after -= 1;
        }
        if after == 0 {
            return Err(match self.peek() {
                Some(_) => self.error("invalid number"),
                None => self.error("EOF while parsing a value"),
            });
        }
        let exponent = before.wrapping_add(after);
        match self.peek() {
            Some(b'e' | b'E') => self.exponent(positive, significand, exponent),
            _ => self.float(positive, significand, exponent),
        }
    }

    /// At `e` or `E`.
    fn exponent(&mut self, positive: bool, significand: u64, start: i32) -> Result<Number, Error> {
        self.at += 1;
        let positive_exponent = match self.peek() {
            Some(b'+') => {
                self.at += 1;
                true
            }
            Some(b'-') => {
                self.at += 1;
                false
            }
            _ => true,
        };
        let mut exponent = match self.next() {
            None => return Err(self.error("EOF while parsing a value")),
            Some(digit @ b'0'..=b'9') => i32::from(digit - b'0'),
            Some(_) => return Err(self.error("invalid number")),
        };
        while let Some(digit) = self.peek_digit() {
            self.at += 1;
            let digit = i32::from(digit);
            if overflows(exponent, digit, i32::MAX, 10) {
                if significand != 0 && positive_exponent {
                    return Err(self.error("number out of range"));
                }
                while self.peek_digit().is_some() {
                    self.at += 1;
                }
                return Ok(Number::Float {
                    negative: !positive,
                    significand: 0,
                    exponent: 0,
                });
            }
            exponent = exponent * 10 + digit;
        }
        let exponent = if positive_exponent {
            start.saturating_add(exponent)
        } else {
            start.saturating_sub(exponent)
        };
        self.float(positive, significand, exponent)
    }

    /// `serde_json` computes `significand as f64 * 10^exponent` and refuses an infinite result;
    /// only a non-zero significand with an exponent from 289 up can get there.
    fn float(&self, positive: bool, significand: u64, exponent: i32) -> Result<Number, Error> {
        if significand != 0 && exponent >= 289 {
            let infinite = usize::try_from(exponent - 289)
                .ok()
                .and_then(|i| POW10_FROM_289.get(i))
                .is_none_or(|pow| (significand as f64 * pow).is_infinite());
            if infinite {
                return Err(self.error("number out of range"));
            }
        }
        Ok(Number::Float {
            negative: !positive,
            significand,
            exponent,
        })
    }
}

/// Collects type errors while fields are read.
#[derive(Default)]
pub(crate) struct Reader {
    pub(crate) errors: Vec<ConfigError>,
}

/// `path.key`, or `key` at the top.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

impl Reader {
    pub(crate) fn error(&mut self, field: &str, problem: String) {
        self.errors.push(ConfigError {
            field: field.to_owned(),
            problem,
        });
    }

    fn wrong_type(&mut self, field: &str, want: &str, got: &Value) {
        self.error(field, format!("expected {want}, found {}", kind(got)));
    }

    /// The value as an object.
    pub(crate) fn object<'v>(&mut self, value: &'v Value, field: &str) -> Option<&'v Object> {
        match value {
            Value::Object(map) => Some(map),
            other => {
                self.wrong_type(field, "an object", other);
                None
            }
        }
    }

    /// An optional string field.
    pub(crate) fn string(&mut self, object: &Object, path: &str, key: &str) -> Option<String> {
        match object.get(key)? {
            Value::String(s) => Some(s.clone()),
            other => {
                self.wrong_type(&join(path, key), "a string", other);
                None
            }
        }
    }

    /// An optional whole-number field no larger than `max`.
    pub(crate) fn whole_number(
        &mut self,
        object: &Object,
        path: &str,
        key: &str,
        max: u64,
    ) -> Option<u64> {
        let value = object.get(key)?;
        match value.as_u64() {
            Some(n) if n <= max => Some(n),
            _ => {
                self.error(
                    &join(path, key),
                    format!("expected a whole number from 0 to {max}"),
                );
                None
            }
        }
    }

    /// An optional list field, each element read by `item` with its own path.
    pub(crate) fn list<T>(
        &mut self,
        object: &Object,
        path: &str,
        key: &str,
        mut item: impl FnMut(&mut Self, &Value, &str) -> Option<T>,
    ) -> Option<Vec<T>> {
        let field = join(path, key);
        match object.get(key)? {
            Value::Array(values) => Some(
                values
                    .iter()
                    .enumerate()
                    .filter_map(|(i, value)| item(self, value, &format!("{field}[{i}]")))
                    .collect(),
            ),
            other => {
                self.wrong_type(&field, "a list", other);
                None
            }
        }
    }

    /// A list element that must be a string.
    pub(crate) fn string_item(&mut self, value: &Value, field: &str) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            other => {
                self.wrong_type(field, "a string", other);
                None
            }
        }
    }

    /// A list element that must be a whole number no larger than `max`.
    pub(crate) fn number_item(&mut self, value: &Value, field: &str, max: u64) -> Option<u64> {
        match value.as_u64() {
            Some(n) if n <= max => Some(n),
            _ => {
                self.error(field, format!("expected a whole number from 0 to {max}"));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted_by_serde_json(document: &[u8]) -> bool {
        serde_json::from_slice::<serde_json::Value>(document).is_ok()
    }

    #[test]
    fn accepts_and_refuses_what_serde_json_does() {
        let long_nesting = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let documents: Vec<Vec<u8>> = [
            "",
            " ",
            "null",
            " true ",
            "false",
            "nul",
            "tru",
            "nulll",
            "0",
            "-0",
            "-",
            "01",
            "-01",
            "1.",
            "1.5",
            ".5",
            "1e",
            "1e+",
            "1e-5",
            "1E+2",
            "1e400",
            "0e400",
            "1e-400",
            "1e308",
            "1e309",
            "17976931348623157e292",
            "17976931348623159e292",
            "1797693134862315e293",
            "18446744073709551615",
            "18446744073709551616",
            "18446744073709551616.0",
            "1844674407370955161.9e289",
            "184467440737095516150e288",
            "-9223372036854775809",
            "1e2147483648",
            "0e2147483648",
            "1e-2147483648",
            "-1e2147483648",
            "[]",
            "[1,]",
            "[1 2]",
            "[",
            "[1",
            "{}",
            "{,}",
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            r#"{"a":1"#,
            r#"{1:1}"#,
            r#"{"a":1 "b":2}"#,
            r#""\u00e9""#,
            r#""\ud83d\ude00""#,
            r#""\ud800""#,
            r#""\ud800\n""#,
            r#""\ud800\u0041""#,
            r#""\udc00""#,
            r#""\u12""#,
            r#""\u12g4""#,
            r#""\x""#,
            "\"\t\"",
            "\"\u{7f}\"",
            "\"abc",
            "\"\\",
            "1 2",
            "[] x",
            "\u{feff}1",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .chain([
            b"\"\xff\"".to_vec(),
            b"\"\xc3\xa9\"".to_vec(),
            b"\"\xed\xa0\x80\"".to_vec(),
            long_nesting(127).into_bytes(),
            long_nesting(128).into_bytes(),
            format!("{}1{}", "{\"a\":".repeat(127), "}".repeat(127)).into_bytes(),
            format!("{}1{}", "{\"a\":".repeat(128), "}".repeat(128)).into_bytes(),
        ])
        .collect();
        for document in &documents {
            assert_eq!(
                parse(document).is_ok(),
                accepted_by_serde_json(document),
                "{:?}: {:?}",
                String::from_utf8_lossy(document),
                parse(document)
            );
        }
    }

    #[test]
    fn edge_cases_in_one_document() {
        // Also fuzz/seeds/config/json-edges.json.
        let seed = r#"{"version": 1, "n": [0, -0, 1.5e3, 18446744073709551615, 18446744073709551616, -9223372036854775808, -9223372036854775809, 1844674407370955161.9, 18446744073709551616.0, 17976931348623157e292, 1e-400, 0e99999999999, -1E+2],
 "s": ["\u00e9\ud83d\ude00\"\\\/\b\f\n\r\t", "é"], "rollouts": {"a": {"hosts": ["a"], "weightBp": 1}, "a": {"hosts": ["b"], "weightBp": 2}, "0": null}, "rollouts": {"b": {"hosts": ["b"]}}}"#;
        let seed = seed.as_bytes();
        assert!(accepted_by_serde_json(seed));
        assert!(parse(seed).is_ok());
    }

    #[test]
    fn objects_keep_the_last_of_duplicate_keys_in_key_order() {
        let Ok(Value::Object(object)) = parse(br#"{"b": 1, "a": 2, "b": 3, "c": {}, "a": 4}"#)
        else {
            unreachable!()
        };
        let keys: Vec<&str> = object.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(object.get("a").and_then(Value::as_u64), Some(4));
        assert_eq!(object.get("b").and_then(Value::as_u64), Some(3));
        assert!(object.contains_key("c") && !object.contains_key("d"));
    }

    #[test]
    fn numbers_and_strings_read_like_serde_json() {
        let read = |document: &str| parse(document.as_bytes());
        assert_eq!(read("7").ok().and_then(|v| v.as_u64()), Some(7));
        assert_eq!(
            read("18446744073709551615").ok().and_then(|v| v.as_u64()),
            Some(u64::MAX)
        );
        for not_whole in ["7.0", "7e0", "-7", "-0", "18446744073709551616"] {
            let value = read(not_whole);
            assert!(matches!(value, Ok(Value::Number(_))), "{not_whole}");
            assert_eq!(value.ok().and_then(|v| v.as_u64()), None, "{not_whole}");
        }
        assert_eq!(
            read("-9223372036854775808"),
            Ok(Value::Number(Number::Negative(i64::MIN)))
        );
        assert_eq!(
            read("-1.25e2"),
            Ok(Value::Number(Number::Float {
                negative: true,
                significand: 125,
                exponent: 0
            }))
        );
        assert_eq!(
            read(r#""a\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00""#),
            Ok(Value::String("a\"\\/\u{8}\u{c}\n\r\té😀".to_owned()))
        );
    }

    #[test]
    fn errors_say_where() {
        let Err(error) = parse(b"{\n  \"a\": 1,\n  \"b\" 2\n}") else {
            unreachable!()
        };
        assert_eq!(error.to_string(), "expected `:` at line 3 column 7");
    }
}
