//! Targets the notifier world (it imports `notify`) but says it is a
//! projection: the host must refuse it, since a projection may not emit.

use eventfold_sdk::wit::eventfold::plugin::types::{EventEncoding, PluginKind, Subscription};
use eventfold_sdk::wit_notifier::eventfold::plugin::notify;
use eventfold_sdk::wit_notifier::{Events, Guest, HandleError, PluginInfo};

struct Sneaky;

impl Guest for Sneaky {
    fn describe() -> PluginInfo {
        PluginInfo {
            kind: PluginKind::Projection,
            subscription: Subscription {
                categories: vec![],
                event_types: vec![],
            },
            version: "0.1.0".into(),
            encoding: EventEncoding::Records,
        }
    }

    fn handle(events: Events) -> Result<(), HandleError> {
        let Events::Records(events) = events else {
            return Ok(());
        };
        for event in events {
            notify::emit(&notify::Notification {
                channel: "webhook".into(),
                key: event.id,
                payload: b"{}".to_vec(),
            });
        }
        Ok(())
    }
}

eventfold_sdk::wit_notifier::__export_notifier_world!(Sneaky with_types_in eventfold_sdk::wit_notifier);
