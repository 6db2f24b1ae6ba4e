//! The shipped filter module exports exactly what `filter/exports.txt` lists, and that list
//! holds the ABI callback of every SDK hook the filter implements: Envoy calls only the
//! callbacks a module exports, so a hook missing from the list would never run.
//!
//! The module checked is `$COHORT_WASM` (what `scripts/test` builds with `scripts/build-wasm`);
//! without it, `scripts/build-wasm` is run here.

// Test code: a failed expectation panics with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

use cohort_tests::workspace_root;

/// The SDK's hooks (trait methods) and the ABI export through which Envoy calls each.
const HOOK_EXPORTS: &[(&str, &str)] = &[
    ("on_vm_start", "proxy_on_vm_start"),
    ("on_configure", "proxy_on_configure"),
    ("on_tick", "proxy_on_tick"),
    ("on_queue_ready", "proxy_on_queue_ready"),
    ("on_done", "proxy_on_done"),
    ("on_log", "proxy_on_log"),
    ("on_foreign_function", "proxy_on_foreign_function"),
    ("on_http_request_headers", "proxy_on_request_headers"),
    ("on_http_request_body", "proxy_on_request_body"),
    ("on_http_request_trailers", "proxy_on_request_trailers"),
    ("on_http_response_headers", "proxy_on_response_headers"),
    ("on_http_response_body", "proxy_on_response_body"),
    ("on_http_response_trailers", "proxy_on_response_trailers"),
    ("on_http_call_response", "proxy_on_http_call_response"),
    ("on_grpc_call_response", "proxy_on_grpc_receive"),
    ("on_grpc_stream_message", "proxy_on_grpc_receive"),
    (
        "on_grpc_stream_initial_metadata",
        "proxy_on_grpc_receive_initial_metadata",
    ),
    (
        "on_grpc_stream_trailing_metadata",
        "proxy_on_grpc_receive_trailing_metadata",
    ),
    ("on_grpc_stream_close", "proxy_on_grpc_close"),
    ("on_new_connection", "proxy_on_new_connection"),
    ("on_downstream_data", "proxy_on_downstream_data"),
    (
        "on_downstream_close",
        "proxy_on_downstream_connection_close",
    ),
    ("on_upstream_data", "proxy_on_upstream_data"),
    ("on_upstream_close", "proxy_on_upstream_connection_close"),
];

fn listed_exports() -> BTreeSet<String> {
    let path = workspace_root().join("filter/exports.txt");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

fn shipped_module() -> PathBuf {
    if let Some(path) = std::env::var_os("COHORT_WASM") {
        return PathBuf::from(path);
    }
    let root = workspace_root();
    let status = Command::new(root.join("scripts/build-wasm"))
        .current_dir(&root)
        .status()
        .expect("run scripts/build-wasm");
    assert!(status.success(), "scripts/build-wasm failed: {status}");
    root.join("target/cohort_filter.wasm")
}

/// Reads an unsigned LEB128 number at `*at`, moving past it.
fn leb128(bytes: &[u8], at: &mut usize) -> u32 {
    let mut value = 0u32;
    for shift in (0..35).step_by(7) {
        let byte = bytes[*at];
        *at += 1;
        value |= u32::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
    }
    panic!("LEB128 number longer than 5 bytes before offset {at}");
}

/// The export names of a wasm module (the binary format's export section, id 7).
fn export_names(module: &[u8]) -> BTreeSet<String> {
    assert_eq!(
        module.get(..8),
        Some(&b"\0asm\x01\0\0\0"[..]),
        "not a wasm module"
    );
    let mut at = 8;
    while at < module.len() {
        let id = module[at];
        at += 1;
        let size = leb128(module, &mut at) as usize;
        let end = at + size;
        if id == 7 {
            let count = leb128(module, &mut at);
            let mut names = BTreeSet::new();
            for _ in 0..count {
                let length = leb128(module, &mut at) as usize;
                let name = std::str::from_utf8(&module[at..at + length]).expect("UTF-8 name");
                names.insert(name.to_owned());
                at += length + 1; // the name, then the export's kind
                leb128(module, &mut at); // its index
            }
            assert_eq!(at, end, "export section ends where its size says");
            return names;
        }
        at = end;
    }
    BTreeSet::new()
}

#[test]
fn the_shipped_module_exports_exactly_the_listed_callbacks() {
    let path = shipped_module();
    let module = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let exported = export_names(&module);
    let listed = listed_exports();
    assert_eq!(
        exported,
        listed,
        "{} against filter/exports.txt (scripts/build-wasm keeps the listed exports; a listed \
         name the module lacks means the SDK renamed it)",
        path.display()
    );
}

#[test]
fn every_hook_the_filter_implements_has_its_callback_listed() {
    let listed = listed_exports();
    let source_dir = workspace_root().join("filter/src");
    let mut implemented = Vec::new();
    for entry in fs::read_dir(&source_dir).unwrap() {
        let path = entry.unwrap().path();
        let source = fs::read_to_string(&path).unwrap();
        for (hook, export) in HOOK_EXPORTS {
            if source.contains(&format!("fn {hook}(")) {
                implemented.push(*hook);
                assert!(
                    listed.contains(*export),
                    "{} implements {hook}, which Envoy calls through {export}: add {export} to \
                     filter/exports.txt",
                    path.display()
                );
            }
        }
    }
    // The filter's own hooks, so that this test cannot pass by finding none.
    for hook in [
        "on_vm_start",
        "on_configure",
        "on_http_request_headers",
        "on_http_response_headers",
    ] {
        assert!(
            implemented.contains(&hook),
            "{hook} not found in filter/src"
        );
    }
    // And no callback is listed that nothing implements: Envoy would cross into the VM for the
    // SDK's empty default on every request.
    for (hook, export) in HOOK_EXPORTS {
        let implemented_by_some_hook = HOOK_EXPORTS
            .iter()
            .any(|(other, same)| same == export && implemented.contains(other));
        assert!(
            !listed.contains(*export) || implemented_by_some_hook,
            "filter/exports.txt lists {export}, but no file of filter/src implements {hook}: \
             remove it from the list"
        );
    }
}

#[test]
fn export_names_reads_a_hand_made_module() {
    // magic, version; a type section to skip (id 1, 1 byte: no types); an export section with
    // "memory" (memory 0) and "f" (function 2).
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    module.extend([1, 1, 0]);
    let exports = [&[2u8][..], &[6], b"memory", &[2, 0], &[1], b"f", &[0, 2]].concat();
    module.push(7);
    module.push(exports.len() as u8);
    module.extend(&exports);
    assert_eq!(
        export_names(&module),
        BTreeSet::from(["memory".to_owned(), "f".to_owned()])
    );
}
