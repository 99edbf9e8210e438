//! `counter`, built directly against WIT 0.1 (no SDK; the SDK is on 0.4):
//! `count` → how many events, `last` → the last position seen. It keeps a
//! plugin of the first released version of the contract in the tests.

wit_bindgen::generate!({ path: "../../../wit", world: "projection" });

use eventfold::plugin::state;
use eventfold::plugin::types::{PluginKind, Subscription};

struct Counter;

fn number(key: &str) -> u64 {
    state::get(key)
        .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0)
}

impl Guest for Counter {
    fn describe() -> PluginInfo {
        PluginInfo {
            kind: PluginKind::Projection,
            subscription: Subscription {
                categories: vec![],
                event_types: vec![],
            },
            version: "0.1.0".into(),
        }
    }

    fn handle(events: Vec<Event>) -> Result<(), HandleError> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        let count = number("count") + events.len() as u64;
        state::set("count", count.to_string().as_bytes());
        state::set("last", last.position.to_string().as_bytes());
        Ok(())
    }

    fn query(_request: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(number("count").to_string().into_bytes())
    }
}

export!(Counter);
