// The body of `scripted-reactor`, shared with `scripted-reactor-v2`, which
// includes it with another `VERSION`.
//
// Each event's data may hold a script (events without one are counted and
// otherwise ignored):
// - `"append": [{"stream", "type", "data", "expected"}]`: appends each, with
//   `expected` one of "any" (the default), "no_stream", "exists" or a version;
// - `"bounce": "stream"`: appends one event of the same type, with the same
//   data, to that stream (two of these reactors bounce events between them).
// From version 2 on, each appended event's data gets `"v": VERSION` (an
// object's) so that a test tells the versions apart.
//
// State: `handled` → how many events it handled.

use eventfold_sdk::{Error, Event, ExpectedVersion, Output, Reactor, State};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize, Default)]
struct Script {
    #[serde(default)]
    append: Vec<Append>,
    bounce: Option<String>,
}

#[derive(Deserialize)]
struct Append {
    stream: String,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    expected: Value,
}

fn expected(value: &Value) -> eventfold_sdk::Result<ExpectedVersion> {
    Ok(match value {
        Value::Null => ExpectedVersion::Any,
        Value::String(s) if s == "any" => ExpectedVersion::Any,
        Value::String(s) if s == "no_stream" => ExpectedVersion::NoStream,
        Value::String(s) if s == "exists" => ExpectedVersion::Exists,
        Value::Number(n) => ExpectedVersion::Exact(n.as_u64().ok_or_else(|| Error::msg("bad version"))?),
        other => return Err(Error::msg(format!("bad expected version {other}"))),
    })
}

fn versioned(mut data: Value) -> Value {
    if VERSION > 1 {
        if let Value::Object(object) = &mut data {
            object.insert("v".into(), VERSION.into());
        }
    }
    data
}

struct Scripted;

impl Reactor for Scripted {
    fn apply(event: &Event, state: &mut State, output: &mut Output) -> eventfold_sdk::Result<()> {
        state.update("handled", |n: &mut u64| *n += 1)?;
        let script: Script = event.decode().unwrap_or_default();
        for append in script.append {
            let expected = expected(&append.expected)?;
            output.append(&append.stream, &append.event_type, &versioned(append.data), expected)?;
        }
        if let Some(stream) = script.bounce {
            let data: Value = event.decode()?;
            output.append(&stream, event.event_type, &versioned(data), ExpectedVersion::Any)?;
        }
        Ok(())
    }

    fn query(_request: &[u8], state: &mut State) -> eventfold_sdk::Result<Vec<u8>> {
        Ok(state.get_bytes("handled").unwrap_or_else(|| b"0".to_vec()))
    }
}

eventfold_sdk::export_reactor!(Scripted);
