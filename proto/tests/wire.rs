//! Golden checks of the wire format: messages round-trip, unknown fields are ignored,
//! newer versions are refused.

use bytes::Bytes;
use nimbus_proto::*;

fn config() -> FunctionConfig {
    FunctionConfig {
        v: WIRE_VERSION,
        name: "hello".into(),
        runtime: "python3.12".into(),
        handler: "app.handler".into(),
        role: "r".into(),
        description: String::new(),
        timeout_secs: 3,
        memory_mb: 128,
        environment: [("A".to_string(), "1".to_string())].into(),
        code: function::CodeRef {
            key: "functions/hello/ab.zip".into(),
            sha256_hex: "ab".into(),
            size: 10,
        },
        last_modified: "2026-11-30T11:28:22.000+0000".into(),
        revision_id: "x".into(),
        ephemeral_storage_mb: 512,
        event_invoke: None,
        url: None,
    }
}

#[test]
fn dispatch_round_trips() {
    let d = Dispatch {
        v: WIRE_VERSION,
        request_id: "r1".into(),
        config: config(),
        revision: 7,
        payload: Bytes::from_static(b"{\"a\":1}"),
        log_tail: true,
        invocation_type: InvocationType::RequestResponse,
        reply_to: "_INBOX.x".into(),
        attempt: 0,
        warm_only: true,
        ack_optional: true,
    };
    let bytes = encode(&d);
    let back: Dispatch = decode(&bytes).unwrap();
    assert_eq!(back, d);
}

#[test]
fn reply_round_trips() {
    let r = InvokeReply::failed("r", WireError::new(ErrorCode::TooManyRequests, "full"));
    let back: InvokeReply = decode(&encode(&r)).unwrap();
    assert_eq!(back, r);
}

#[test]
fn newer_version_is_refused() {
    let mut h = Heartbeat {
        v: WIRE_VERSION + 1,
        worker_id: "w".into(),
        slots: 1,
        busy: 0,
        draining: false,
        warm: vec![],
        sandbox: Default::default(),
    };
    let err = decode::<Heartbeat>(&encode(&h)).unwrap_err();
    assert!(matches!(err, DecodeError::UnsupportedVersion { .. }));
    h.v = WIRE_VERSION;
    assert!(decode::<Heartbeat>(&encode(&h)).is_ok());
}

#[test]
fn unknown_fields_are_ignored_and_missing_defaults_apply() {
    #[derive(serde::Serialize)]
    struct Future {
        v: u16,
        worker_id: &'static str,
        slots: u32,
        busy: u32,
        some_new_field: &'static str,
    }
    let bytes = rmp_serde::to_vec_named(&Future {
        v: 1,
        worker_id: "w",
        slots: 4,
        busy: 1,
        some_new_field: "x",
    })
    .unwrap();
    let h: Heartbeat = decode(&bytes).unwrap();
    assert_eq!(h.slots, 4);
    assert!(h.warm.is_empty());
    assert!(!h.draining);
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    assert!(decode::<Dispatch>(b"\xff\x00garbage").is_err());
}
