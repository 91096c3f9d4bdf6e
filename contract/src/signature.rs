//! The scorer's signature on its summaries: HMAC-SHA256 under a key of the run that only the
//! harness and the runner can read (the trainer's sandbox does not let it near the key). A
//! summary that reaches the runner by another way than its executors (`tree record
//! --summary-json`, a person's cluster job) counts as scored only when its signature checks
//! out; otherwise it is `unverified`.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The field that holds the signature.
pub const FIELD: &str = "signature";

/// HMAC-SHA256 of `message` under `key`, as lowercase hex.
pub fn hmac_hex(key: &[u8], message: &[u8]) -> String {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |x: u8| block.map(|b| b ^ x);
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    let outer = Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize();
    outer.iter().map(|b| format!("{b:02x}")).collect()
}

/// What is signed: the record's JSON without its signature (serde_json writes a map's fields in
/// the same order each time, and numbers so that they read back equal).
fn message(record: &Map<String, Value>) -> Vec<u8> {
    let mut m = record.clone();
    m.remove(FIELD);
    serde_json::to_vec(&Value::Object(m)).expect("a JSON map serializes")
}

/// Adds the signature to a summary record.
pub fn sign(key: &[u8], record: &mut Map<String, Value>) {
    // Signed as a reader will see it: serde_json's default float parsing can land one ULP off
    // the value written, and the reader's message is built from what it parsed.
    let written = serde_json::to_vec(&Value::Object(record.clone())).expect("a JSON map serializes");
    let read: Map<String, Value> = serde_json::from_slice(&written).expect("serde_json reads what it wrote");
    let sig = hmac_hex(key, &message(&read));
    record.insert(FIELD.into(), Value::String(sig));
}

/// Whether `record` carries a valid signature under `key`; Err says why not.
pub fn verify(key: &[u8], record: &Value) -> Result<(), String> {
    let map = record.as_object().ok_or("the summary is not a JSON object")?;
    let claimed = map.get(FIELD).and_then(Value::as_str).ok_or("the summary carries no signature (it was not written by the run's scorer)")?;
    let want = hmac_hex(key, &message(map));
    // Constant time: no early exit on the first differing byte.
    let same = claimed.len() == want.len() && claimed.bytes().zip(want.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if same { Ok(()) } else { Err("the summary's signature does not match this run's key (it was changed, or signed for another run)".into()) }
}

/// A fresh key, as the hex text stored in a key file.
pub fn new_key_hex() -> String {
    let mut r = crate::random::Unpredictable::new();
    (0..4).map(|_| format!("{:016x}", r.next_u64())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A summary holds timings and losses of every magnitude; each one written and read back by
    /// serde_json must still verify (the default float parser may land one ULP off).
    #[test]
    fn a_summary_of_many_floats_verifies_after_a_round_trip_through_its_file() {
        let key = new_key_hex();
        let mut r = crate::random::Unpredictable::new();
        let mut record = Map::new();
        for i in 0..2000 {
            let x = f64::from_bits(r.next_u64() >> 2) * if i % 2 == 0 { 1e-300 } else { 1.0 };
            if x.is_finite() {
                record.insert(format!("f{i}"), serde_json::json!(x));
            }
            record.insert(format!("t{i}"), serde_json::json!((r.next_u64() % 1_000_000_000) as f64 / 1e6));
        }
        sign(key.as_bytes(), &mut record);
        let text = serde_json::to_string_pretty(&Value::Object(record)).unwrap();
        let read: Value = serde_json::from_str(&text).unwrap();
        verify(key.as_bytes(), &read).unwrap();
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        assert_eq!(hmac_hex(b"Jefe", b"what do ya want for nothing?"), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn a_signed_summary_verifies_and_any_change_breaks_it() {
        let key = new_key_hex();
        let mut rec: Map<String, Value> = serde_json::from_str(r#"{"val_bpb": 1.234567891234, "status": "ok", "num_steps": 40}"#).unwrap();
        sign(key.as_bytes(), &mut rec);
        let text = serde_json::to_string_pretty(&Value::Object(rec.clone())).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        verify(key.as_bytes(), &back).unwrap();
        let mut forged = back.clone();
        forged["val_bpb"] = serde_json::json!(0.5);
        assert!(verify(key.as_bytes(), &forged).unwrap_err().contains("does not match"));
        assert!(verify(b"another key", &back).is_err());
        let mut unsigned = back;
        unsigned.as_object_mut().unwrap().remove(FIELD);
        assert!(verify(key.as_bytes(), &unsigned).unwrap_err().contains("no signature"));
    }
}
