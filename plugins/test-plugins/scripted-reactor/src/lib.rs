//! A reactor that appends what each event's data tells it to: see `script.rs`.

const VERSION: u64 = 1;

include!("script.rs");
