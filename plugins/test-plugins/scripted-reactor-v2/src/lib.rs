//! Version 2 of `scripted-reactor`: the same, and its outputs' data carry `"v": 2`.

const VERSION: u64 = 2;

include!("../../scripted-reactor/src/script.rs");
