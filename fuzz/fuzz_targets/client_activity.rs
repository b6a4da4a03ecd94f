//! A client's activity on its way upstream (`src/activity_body.rs`): the body of
//! `POST …/activities` and every text frame of `…/stream/multimodal` go through
//! `bind_sender` before Direct Line sees them.
//!
//! Input: the bytes are the body (or frame) as the client sent it. Invariants:
//! - never a panic, whatever the bytes;
//! - numbers beyond f64 (`1E772271`) are valid JSON that `Value` cannot hold: such bodies
//!   may be accepted (fields are copied as text), and then must come out as valid JSON with
//!   the same fields and the same bound `from` (regression `number-beyond-f64`);
//! - a JSON object within the nesting limit is accepted, anything else refused;
//! - what is accepted comes out as a JSON object equal to the input's, field for field, except
//!   `from`, which is exactly `{"id": <bound user>}` plus the caller's `name` when it is a
//!   string and `role` only when it is `"user"`: no client can speak as another user, as the
//!   bot, or with channel fields such as `aadObjectId`.

#![no_main]

use directline_gateway::activity_body::{MAX_DEPTH, bind_sender};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

const USER: &str = "dl_fuzz-user";

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn expected_from(claimed: Option<&Value>) -> Value {
    let mut from = json!({ "id": USER });
    if let Some(Value::Object(claimed)) = claimed {
        if let Some(name) = claimed.get("name").filter(|n| n.is_string()) {
            from["name"] = name.clone();
        }
        if claimed.get("role").and_then(Value::as_str) == Some("user") {
            from["role"] = "user".into();
        }
    }
    from
}

fn expected(mut activity: Map<String, Value>) -> Value {
    let from = expected_from(activity.get("from"));
    activity.insert("from".into(), from);
    Value::Object(activity)
}

/// The text-level check for JSON that `Value` cannot hold.
fn same_fields_as_text(data: &[u8], bound: &[u8]) {
    let input: BTreeMap<String, Box<RawValue>> =
        serde_json::from_slice(data).expect("accepted input is a JSON object");
    let output: BTreeMap<String, Box<RawValue>> =
        serde_json::from_slice(bound).expect("output is a JSON object");
    // Field by field: a `from` holding a number beyond f64 elsewhere (`"name":8883E7068…`)
    // still has its `role` read, as the gateway reads it.
    let claimed = input
        .get("from")
        .and_then(|raw| serde_json::from_str::<BTreeMap<String, Box<RawValue>>>(raw.get()).ok())
        .map(|fields| {
            Value::Object(
                fields
                    .iter()
                    .filter(|(key, _)| *key == "name" || *key == "role")
                    .filter_map(|(key, raw)| {
                        serde_json::from_str::<Value>(raw.get())
                            .ok()
                            .map(|value| (key.clone(), value))
                    })
                    .collect(),
            )
        });
    let from: Value = serde_json::from_str(output["from"].get()).unwrap();
    assert_eq!(from, expected_from(claimed.as_ref()));
    let keys = |m: &BTreeMap<String, Box<RawValue>>| {
        m.keys()
            .filter(|k| *k != "from")
            .cloned()
            .collect::<Vec<String>>()
    };
    assert_eq!(keys(&input), keys(&output));
}

fuzz_target!(|data: &[u8]| {
    let result = bind_sender(data, USER);
    // serde_json refuses the 128th level itself, so a successful full parse is within it.
    match serde_json::from_slice::<Value>(data) {
        Ok(Value::Object(activity)) => {
            assert!(depth(&Value::Object(activity.clone())) <= MAX_DEPTH);
            let bound = result.expect("a JSON object is accepted");
            let parsed: Value = serde_json::from_slice(&bound).expect("output is JSON");
            assert_eq!(parsed, expected(activity));
        }
        Err(error) if error.to_string().starts_with("number out of range") => {
            if let Ok(bound) = result {
                same_fields_as_text(data, &bound);
            }
        }
        _ => assert!(result.is_err(), "not a JSON object, yet accepted"),
    }
});
