//! A notifier built directly against WIT 0.2 (no SDK), asking for its events
//! as typed records: one notification per `order` event, keyed by stream and
//! version, whose payload says where the event sat in the log and carries its
//! data. It also counts the events it saw in its state, so the test can check
//! that the 0.2 `state` import works for a notifier.

wit_bindgen::generate!({ path: "../../../wit/v0.2", world: "notifier" });

use eventfold::plugin::notify::{Notification, emit};
use eventfold::plugin::state;
use eventfold::plugin::types::{EventEncoding, PluginKind, Subscription};

struct RecordsNotifier;

impl Guest for RecordsNotifier {
    fn describe() -> PluginInfo {
        PluginInfo {
            kind: PluginKind::Notifier,
            subscription: Subscription {
                categories: vec!["order".into()],
                event_types: vec![],
            },
            version: "0.2.0".into(),
            encoding: EventEncoding::Records,
        }
    }

    fn handle(events: Events) -> Result<(), HandleError> {
        let Events::Records(events) = events else {
            return Err(HandleError {
                index: 0,
                message: "asked for records, got JSON".into(),
            });
        };
        for event in &events {
            let mut payload = format!(
                r#"{{"position":{},"type":"{}","data":"#,
                event.position, event.event_type
            )
            .into_bytes();
            payload.extend_from_slice(&event.data);
            payload.push(b'}');
            emit(&Notification {
                channel: "webhook".into(),
                key: format!("{}/{}", event.stream, event.version),
                payload,
            });
        }
        let seen = state::get("seen")
            .and_then(|v| String::from_utf8(v).ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        state::set("seen", (seen + events.len()).to_string().as_bytes());
        Ok(())
    }
}

export!(RecordsNotifier);
