//! The values a hostile file lies with: boundaries, overflows, the original off by one.

use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Value as Json, json};

/// An integer a count, dim, offset or id might be replaced with, near `orig`.
pub fn int(rng: &mut StdRng, orig: u64) -> u64 {
    const FIXED: [u64; 18] = [0, 1, 2, 3, 7, 8, 15, 16, 31, 32, 33, 255, 256, 4095, 4096, 65535, 65536, 1 << 20];
    const HUGE: [u64; 8] = [u32::MAX as u64, 1 << 32, (1 << 32) + 1, i32::MAX as u64, 1 << 40, 1 << 62, i64::MAX as u64, u64::MAX];
    match rng.random_range(0..6) {
        0 => FIXED[rng.random_range(0..FIXED.len())],
        1 => HUGE[rng.random_range(0..HUGE.len())],
        2 => orig.wrapping_add(1),
        3 => orig.wrapping_sub(1),
        4 => orig.wrapping_mul(rng.random_range(2..5)),
        _ => rng.random::<u64>() >> rng.random_range(0..64),
    }
}

/// A float a scale, theta or epsilon might be replaced with.
pub fn float(rng: &mut StdRng) -> f64 {
    const F: [f64; 12] = [0.0, -0.0, -1.0, 1.0, 0.5, 1e-30, 1e30, f64::MAX, f64::MIN_POSITIVE, f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
    F[rng.random_range(0..F.len())]
}

/// A string a text field might hold: empty, whitespace only, special tokens, odd Unicode, long.
pub fn text(rng: &mut StdRng) -> String {
    const T: [&str; 12] = ["", " ", "\n", " \n\t", "the", "Ġthe", "<|endoftext|>", "\u{a0}\u{2028}", "é\u{301}", "\u{1f600}", "a\0b", "\u{feff}x"];
    match rng.random_range(0..8) {
        0 => "x".repeat(rng.random_range(0..3000)),
        1 => (0..rng.random_range(0..40)).map(|_| char::from_u32(rng.random_range(0..0x3000)).unwrap_or('?')).collect(),
        _ => (0..rng.random_range(1..4)).map(|_| T[rng.random_range(0..T.len())]).collect(),
    }
}

/// A JSON value of any type, biased to numbers a field would not expect.
pub fn json(rng: &mut StdRng, orig: &Json) -> Json {
    match rng.random_range(0..10) {
        0 => Json::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(text(rng)),
        3 => json!([orig.clone(), orig.clone()]),
        4 => json!({ "x": orig.clone() }),
        5 => json!(-(int(rng, 1) as i64 & i64::MAX)),
        6 => serde_json::Number::from_f64(float(rng)).map(Json::Number).unwrap_or(json!(1e308)),
        7 => json!(orig.as_u64().unwrap_or(1) as f64 + 0.5),
        _ => json!(int(rng, orig.as_u64().unwrap_or(0))),
    }
}

/// Bytes with one structural lie: cut short, extended, or a few bytes set to NaN/inf patterns.
pub fn bytes(rng: &mut StdRng, b: &mut Vec<u8>, from: usize, lies: &mut Vec<String>) {
    if b.len() <= from {
        return;
    }
    match rng.random_range(0..4) {
        0 => {
            let at = rng.random_range(0..b.len());
            lies.push(format!("truncate at {at}"));
            b.truncate(at);
        }
        1 => {
            let n = rng.random_range(1..100);
            lies.push(format!("append {n} bytes"));
            b.extend((0..n).map(|_| rng.random::<u8>()));
        }
        _ => {
            // NaN and inf in f32, f16 and bf16, at an even offset of the data.
            const PATTERNS: [&[u8]; 5] = [&[0x00, 0x00, 0xc0, 0x7f], &[0x00, 0x00, 0x80, 0x7f], &[0x00, 0x7e], &[0x00, 0x7c], &[0xc0, 0x7f]];
            let p = PATTERNS[rng.random_range(0..PATTERNS.len())];
            let at = from + (rng.random_range(0..b.len() - from) & !1);
            lies.push(format!("write {p:02x?} at {at}"));
            for (i, &x) in p.iter().enumerate() {
                if let Some(slot) = b.get_mut(at + i) {
                    *slot = x;
                }
            }
        }
    }
}
