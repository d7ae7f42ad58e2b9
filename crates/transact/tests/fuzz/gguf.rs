//! The GGUF reader: the header as fields, lied about one to three at a time, re-serialized (with
//! counts and lengths that may lie too) and loaded from memory.

use std::io::{BufReader, Cursor};

use candle_core::Device;
use rand::Rng;
use rand::rngs::StdRng;

use crate::fixture::gguf_seeds;
use crate::{Outcome, lies, run_target};

#[derive(Clone)]
struct Kv {
    key: String,
    vtype: u32,
    raw: Vec<u8>,
}

#[derive(Clone)]
struct Info {
    name: String,
    dims: Vec<u64>,
    ttype: u32,
    offset: u64,
}

#[derive(Clone)]
struct Gguf {
    version: u32,
    tensor_count: Option<u64>,
    kv_count: Option<u64>,
    /// A string whose length prefix lies: (index of the key, the stated length).
    key_len_lie: Option<(usize, u64)>,
    n_dims_lie: Option<(usize, u32)>,
    kvs: Vec<Kv>,
    infos: Vec<Info>,
    /// Bytes from the start of the tensor data.
    data: Vec<u8>,
}

fn u32_at(b: &[u8], p: usize) -> u32 {
    u32::from_le_bytes(b[p..p + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], p: usize) -> u64 {
    u64::from_le_bytes(b[p..p + 8].try_into().unwrap())
}

/// Bytes taken by a value of type `t` at `p` (our seeds are valid files).
fn value_len(b: &[u8], p: usize, t: u32) -> usize {
    match t {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        8 => 8 + u64_at(b, p) as usize,
        9 => {
            let (et, n) = (u32_at(b, p), u64_at(b, p + 4));
            let mut q = p + 12;
            for _ in 0..n {
                q += value_len(b, q, et);
            }
            q - p
        }
        _ => unreachable!("seed value type {t}"),
    }
}

fn parse(b: &[u8]) -> Gguf {
    let string = |p: &mut usize| {
        let n = u64_at(b, *p) as usize;
        let s = String::from_utf8(b[*p + 8..*p + 8 + n].to_vec()).unwrap();
        *p += 8 + n;
        s
    };
    let (nt, nkv) = (u64_at(b, 8), u64_at(b, 16));
    let mut p = 24;
    let mut kvs = Vec::new();
    for _ in 0..nkv {
        let key = string(&mut p);
        let vtype = u32_at(b, p);
        let n = value_len(b, p + 4, vtype);
        kvs.push(Kv { key, vtype, raw: b[p + 4..p + 4 + n].to_vec() });
        p += 4 + n;
    }
    let mut infos = Vec::new();
    for _ in 0..nt {
        let name = string(&mut p);
        let nd = u32_at(b, p) as usize;
        let dims = (0..nd).map(|i| u64_at(b, p + 4 + 8 * i)).collect();
        p += 4 + 8 * nd;
        infos.push(Info { name, dims, ttype: u32_at(b, p), offset: u64_at(b, p + 4) });
        p += 12;
    }
    let data = b[p.div_ceil(32) * 32..].to_vec();
    Gguf { version: u32_at(b, 4), tensor_count: None, kv_count: None, key_len_lie: None, n_dims_lie: None, kvs, infos, data }
}

fn serialize(g: &Gguf) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(g.version.to_le_bytes());
    b.extend(g.tensor_count.unwrap_or(g.infos.len() as u64).to_le_bytes());
    b.extend(g.kv_count.unwrap_or(g.kvs.len() as u64).to_le_bytes());
    for (i, kv) in g.kvs.iter().enumerate() {
        let len = match g.key_len_lie {
            Some((j, n)) if j == i => n,
            _ => kv.key.len() as u64,
        };
        b.extend(len.to_le_bytes());
        b.extend(kv.key.as_bytes());
        b.extend(kv.vtype.to_le_bytes());
        b.extend(&kv.raw);
    }
    for (i, t) in g.infos.iter().enumerate() {
        b.extend((t.name.len() as u64).to_le_bytes());
        b.extend(t.name.as_bytes());
        let nd = match g.n_dims_lie {
            Some((j, n)) if j == i => n,
            _ => t.dims.len() as u32,
        };
        b.extend(nd.to_le_bytes());
        t.dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
        b.extend(t.ttype.to_le_bytes());
        b.extend(t.offset.to_le_bytes());
    }
    b.resize(b.len().div_ceil(32) * 32, 0);
    b.extend(&g.data);
    b
}

/// Lies about one field of the header or the data.
fn lie(rng: &mut StdRng, g: &mut Gguf, lies: &mut Vec<String>) {
    let kv = rng.random_range(0..g.kvs.len());
    let ti = rng.random_range(0..g.infos.len());
    match rng.random_range(0..16) {
        0 => {
            g.tensor_count = Some(lies::int(rng, g.infos.len() as u64));
            lies.push(format!("tensor_count {:?}", g.tensor_count));
        }
        1 => {
            g.kv_count = Some(lies::int(rng, g.kvs.len() as u64));
            lies.push(format!("kv_count {:?}", g.kv_count));
        }
        2 => {
            g.version = lies::int(rng, 3) as u32;
            lies.push(format!("version {}", g.version));
        }
        3 => {
            // A numeric value: an integer keeps its width, a float becomes NaN, inf, 0, huge…
            let k = &mut g.kvs[kv];
            // An earlier lie may have changed the type: its raw bytes can be shorter than it.
            let w = k.raw.len();
            match k.vtype {
                4 | 5 if w >= 4 => k.raw = (lies::int(rng, u32_at(&k.raw, 0) as u64) as u32).to_le_bytes().to_vec(),
                10 | 11 if w >= 8 => k.raw = lies::int(rng, u64_at(&k.raw, 0)).to_le_bytes().to_vec(),
                6 => k.raw = (lies::float(rng) as f32).to_le_bytes().to_vec(),
                9 if w >= 12 => {
                    let n = lies::int(rng, u64_at(&k.raw, 4));
                    k.raw[4..12].copy_from_slice(&n.to_le_bytes());
                }
                8 if w >= 8 => {
                    let n = lies::int(rng, u64_at(&k.raw, 0));
                    k.raw[..8].copy_from_slice(&n.to_le_bytes());
                }
                _ => {}
            }
            lies.push(format!("value of {}", k.key));
        }
        4 => {
            let t = if rng.random() { rng.random_range(0..14) } else { lies::int(rng, 4) as u32 };
            lies.push(format!("type of {} {} → {t}", g.kvs[kv].key, g.kvs[kv].vtype));
            g.kvs[kv].vtype = t;
        }
        5 => {
            lies.push(format!("duplicate key {}", g.kvs[kv].key));
            let dup = g.kvs[kv].clone();
            let at = rng.random_range(0..=g.kvs.len());
            g.kvs.insert(at, dup);
        }
        6 => {
            lies.push(format!("remove key {}", g.kvs[kv].key));
            g.kvs.remove(kv);
        }
        7 => {
            g.key_len_lie = Some((kv, lies::int(rng, g.kvs[kv].key.len() as u64)));
            lies.push(format!("key length {:?}", g.key_len_lie));
        }
        8 if !g.infos[ti].dims.is_empty() => {
            let d = rng.random_range(0..g.infos[ti].dims.len());
            let v = lies::int(rng, g.infos[ti].dims[d]);
            lies.push(format!("{} dim {d} → {v}", g.infos[ti].name));
            g.infos[ti].dims[d] = v;
        }
        9 => {
            if rng.random() {
                g.infos[ti].dims.push(lies::int(rng, 1));
            } else {
                g.infos[ti].dims.pop();
            }
            lies.push(format!("{} dims {:?}", g.infos[ti].name, g.infos[ti].dims));
        }
        10 => {
            g.n_dims_lie = Some((ti, lies::int(rng, 2) as u32));
            lies.push(format!("n_dims {:?}", g.n_dims_lie));
        }
        11 => {
            let t = if rng.random() { rng.random_range(0..42) } else { lies::int(rng, 8) as u32 };
            lies.push(format!("{} type → {t}", g.infos[ti].name));
            g.infos[ti].ttype = t;
        }
        12 => {
            let other = g.infos[rng.random_range(0..g.infos.len())].offset;
            let v = if rng.random() { other } else { lies::int(rng, g.infos[ti].offset) };
            lies.push(format!("{} offset → {v}", g.infos[ti].name));
            g.infos[ti].offset = v;
        }
        13 => {
            let other = g.infos[rng.random_range(0..g.infos.len())].name.clone();
            lies.push(format!("{} named {other}", g.infos[ti].name));
            g.infos[ti].name = other;
        }
        14 => {
            let (vtype, raw) = match rng.random_range(0..3) {
                0 => (4, (lies::int(rng, 32) as u32).to_le_bytes().to_vec()),
                1 => (10, lies::int(rng, 32).to_le_bytes().to_vec()),
                _ => (8, [8u64.to_le_bytes().to_vec(), b"thirty-2".to_vec()].concat()),
            };
            lies.push(format!("general.alignment type {vtype} {raw:?}"));
            g.kvs.push(Kv { key: "general.alignment".into(), vtype, raw });
        }
        _ => {
            let mut d = std::mem::take(&mut g.data);
            lies::bytes(rng, &mut d, 0, lies);
            g.data = d;
        }
    }
}

#[test]
fn gguf_reader() {
    let seeds: Vec<Gguf> = gguf_seeds().iter().map(|b| parse(b)).collect();
    // The seeds are valid: they load, and serialize back to themselves.
    for (g, b) in seeds.iter().zip(gguf_seeds()) {
        let again = serialize(g);
        let first_difference = again.iter().zip(b).position(|(x, y)| x != y);
        assert!(again.len() == b.len() && first_difference.is_none(), "seed does not round-trip: {} vs {} bytes, first difference at {first_difference:?}", again.len(), b.len());
    }
    run_target("gguf", 100_000, |rng, lies| {
        let mut g = seeds[rng.random_range(0..seeds.len())].clone();
        for _ in 0..rng.random_range(1..=3) {
            lie(rng, &mut g, lies);
        }
        let bytes = serialize(&g);
        let len = bytes.len() as u64;
        match transact::model::io::gguf::load_from(&mut BufReader::new(Cursor::new(bytes)), len, &Device::Cpu) {
            Err(_) => Ok(Outcome::Refused),
            Ok(m) => {
                // What loads must hold together: its tokenizer fits its embedding, it runs.
                let ids = m.tokenizer.encode("the theme <|endoftext|> \u{1f600}").map_err(|e| e.to_string())?;
                if let Some(id) = ids.iter().find(|&&i| i as usize >= m.config.vocab_size) {
                    return Err(format!("token id {id} beyond the vocabulary of {}", m.config.vocab_size));
                }
                let model = transact::Model::new(m.config, m.weights);
                let _ = model.logits(&ids[..ids.len().min(8)]);
                Ok(Outcome::Accepted)
            }
        }
    });
}
