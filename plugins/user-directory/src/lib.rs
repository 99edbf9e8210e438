//! The classic example: a directory of users. State: `user/{id}` → `{"name"}`;
//! a deleted user is removed.

use eventfold_sdk::{Event, Projection, State, Subscription};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(tag = "type", content = "data")]
enum UserEvent {
    UserCreated {
        #[serde(rename = "userId")]
        user_id: u64,
        name: String,
    },
    UserNameUpdated {
        #[serde(rename = "userId")]
        user_id: u64,
        name: String,
    },
    UserDeleted {
        #[serde(rename = "userId")]
        user_id: u64,
    },
}

#[derive(Serialize, Deserialize)]
struct User {
    name: String,
}

struct UserDirectory;

impl Projection for UserDirectory {
    fn subscription() -> Subscription {
        Subscription::categories(["user"])
    }

    fn apply(event: &Event, state: &mut State) -> eventfold_sdk::Result<()> {
        match event.decode_tagged::<UserEvent>()? {
            UserEvent::UserCreated { user_id, name } | UserEvent::UserNameUpdated { user_id, name } => {
                state.put(&format!("user/{user_id}"), &User { name });
            }
            UserEvent::UserDeleted { user_id } => state.delete(&format!("user/{user_id}")),
        }
        Ok(())
    }
}

eventfold_sdk::export_projection!(UserDirectory);
