//! Reader for PyTorch's legacy (pre-1.6, non-zip) checkpoint format, which candle cannot
//! read but which real checkpoints still use.
//!
//! The file is a sequence of pickles followed by raw storage bytes:
//! magic number, protocol version, system info, the object itself (tensors refer to their
//! storages through persistent ids), the list of storage keys, then for each key in that
//! order an i64 element count and the storage's little-endian bytes.

use std::collections::HashMap;
use std::io::{Cursor, Read};

use candle_core::pickle::{Object, Stack};
use candle_core::Tensor;

/// Protocol-2 pickle of the magic number 0x1950a86a20f9469cfc6c (LONG1, 10 bytes, STOP).
const MAGIC_PICKLE: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.',
];

/// Does this file start like a legacy PyTorch checkpoint?
pub fn is_legacy(head: &[u8]) -> bool {
    head.starts_with(&MAGIC_PICKLE[..4])
}

fn err(msg: impl Into<String>) -> candle_core::Error {
    candle_core::Error::Msg(msg.into())
}

fn read_pickle(reader: &mut impl std::io::BufRead) -> candle_core::Result<Object> {
    let mut stack = Stack::empty();
    stack.read_loop(reader)?;
    stack.finalize()
}

/// Keys under which training scripts commonly nest the state dict.
pub const WRAPPER_KEYS: [&str; 5] = ["state_dict", "model", "model_state_dict", "net", "module"];

/// Keys under which training scripts keep a moving average of the weights beside them
/// (timm's `state_dict_ema`; DeiT's and ConvNeXt's `model_ema`).
pub const EMA_KEYS: [&str; 2] = ["state_dict_ema", "model_ema"];

/// Every wrapper key, in the order they are tried: the weights, then their moving
/// average, which a checkpoint holding nothing else gives.
pub fn wrapper_keys() -> impl Iterator<Item = &'static str> {
    WRAPPER_KEYS.into_iter().chain(EMA_KEYS)
}

/// Two sets of weights in one checkpoint: the wrapper key of the weights, and that of
/// their moving average beside them.
pub type TwoSets = (&'static str, &'static str);

/// Named tensors as a checkpoint holds them.
pub type Tensors = Vec<(String, Tensor)>;

/// Descend into `{"state_dict": {...}}`-style wrappers until a dict of tensors is found;
/// also says where a moving average sits beside the weights found.
fn unwrap_state_dict(obj: Object) -> (Object, Option<TwoSets>) {
    let Object::Dict(entries) = obj else {
        return (obj, None);
    };
    let is_tensor = |v: &Object| matches!(v, Object::Reduce { .. });
    if entries.iter().any(|(_, v)| is_tensor(v)) {
        return (Object::Dict(entries), None);
    }
    let find = |key: &str| {
        entries
            .iter()
            .find(|(k, v)| {
                matches!(k, Object::Unicode(s) if s == key) && matches!(v, Object::Dict(_))
            })
            .map(|(_, v)| v)
    };
    for key in wrapper_keys() {
        if let Some(inner) = find(key) {
            let ema = EMA_KEYS
                .into_iter()
                .find(|&e| e != key && find(e).is_some());
            let (state, deeper) = unwrap_state_dict(inner.clone());
            let beside = ema.filter(|_| !EMA_KEYS.contains(&key)).map(|e| (key, e));
            return (state, beside.or(deeper));
        }
    }
    (Object::Dict(entries), None)
}

/// The element size of every storage the pickle refers to, by storage key: its persistent
/// ids are `("storage", torch.<Type>Storage, key, location, numel)`.
fn storage_sizes(obj: &Object, out: &mut HashMap<String, usize>) {
    match obj {
        Object::PersistentLoad(id) => {
            if let Object::Tuple(fields) = id.as_ref() {
                if let [Object::Unicode(kind), Object::Class { class_name, .. }, Object::Unicode(key), ..] =
                    fields.as_slice()
                {
                    let size = match class_name.as_str() {
                        "DoubleStorage" | "LongStorage" | "ComplexFloatStorage" => 8,
                        "FloatStorage" | "IntStorage" => 4,
                        "HalfStorage" | "BFloat16Storage" | "ShortStorage" => 2,
                        "ByteStorage" | "CharStorage" | "BoolStorage" => 1,
                        "ComplexDoubleStorage" => 16,
                        _ => return,
                    };
                    if kind == "storage" {
                        out.insert(key.clone(), size);
                    }
                }
            }
        }
        Object::Tuple(items) | Object::List(items) => {
            items.iter().for_each(|o| storage_sizes(o, out));
        }
        Object::Dict(entries) => entries.iter().for_each(|(k, v)| {
            storage_sizes(k, out);
            storage_sizes(v, out);
        }),
        Object::Reduce { callable, args } | Object::Build { callable, args } => {
            storage_sizes(callable, out);
            storage_sizes(args, out);
        }
        _ => {}
    }
}

/// Read every tensor of a legacy checkpoint held in `bytes`, and where a moving average of
/// the weights sits beside them.
pub fn read(bytes: &[u8]) -> candle_core::Result<(Tensors, Option<TwoSets>)> {
    if !bytes.starts_with(&MAGIC_PICKLE) {
        return Err(err(
            "not a legacy PyTorch checkpoint (bad magic number or unsupported pickle protocol)",
        ));
    }
    // A Cursor over a slice is itself BufRead, so its position is exactly what the
    // pickles consumed.
    let mut reader = Cursor::new(&bytes[MAGIC_PICKLE.len()..]);
    let _protocol_version = read_pickle(&mut reader)?;
    let sys_info = read_pickle(&mut reader)?;
    if let Object::Dict(entries) = &sys_info {
        let big_endian = entries.iter().any(|(k, v)| {
            matches!(k, Object::Unicode(s) if s == "little_endian") && *v == Object::Bool(false)
        });
        if big_endian {
            return Err(err("big-endian legacy checkpoints are not supported"));
        }
    }
    let root = read_pickle(&mut reader)?;
    // Every storage's element size, those of tensors outside the state dict (an optimizer's,
    // a moving average's) included: the data section holds them all, one after another.
    let mut elem_size = HashMap::new();
    storage_sizes(&root, &mut elem_size);
    let (state, two_sets) = unwrap_state_dict(root);
    let storage_keys: Vec<String> = match read_pickle(&mut reader)? {
        Object::List(keys) => keys
            .into_iter()
            .map(|k| {
                k.unicode()
                    .map_err(|o| err(format!("bad storage key {o:?}")))
            })
            .collect::<candle_core::Result<_>>()?,
        other => {
            return Err(err(format!(
                "expected the list of storage keys, got {other:?}"
            )))
        }
    };

    let infos = match state {
        Object::Dict(entries) => entries
            .into_iter()
            .filter_map(|(name, value)| {
                value
                    .into_tensor_info(name, std::path::Path::new(""))
                    .transpose()
            })
            .collect::<candle_core::Result<Vec<_>>>()?,
        _ => return Err(err("the checkpoint does not hold a dict of tensors")),
    };
    for info in &infos {
        let key = info.path.trim_start_matches('/').to_string();
        elem_size.entry(key).or_insert(info.dtype.size_in_bytes());
    }

    // Storage data follows the pickles, in the order of the key list.
    let mut offset = MAGIC_PICKLE.len() as u64 + reader.position();
    let mut storages: HashMap<&str, &[u8]> = HashMap::new();
    for key in &storage_keys {
        let start = usize::try_from(offset).map_err(|_| err("file too large"))?;
        let mut count = [0u8; 8];
        Cursor::new(bytes.get(start..).unwrap_or_default())
            .read_exact(&mut count)
            .map_err(|_| err(format!("truncated before storage {key}")))?;
        let numel = u64::from_le_bytes(count);
        let size = elem_size.get(key).copied().unwrap_or(1) as u64;
        let len = numel
            .checked_mul(size)
            .ok_or_else(|| err(format!("storage {key} is too large")))?;
        let data_start = offset + 8;
        let data_end = data_start + len;
        let data = usize::try_from(data_start)
            .ok()
            .zip(usize::try_from(data_end).ok())
            .and_then(|(s, e)| bytes.get(s..e))
            .ok_or_else(|| err(format!("truncated in storage {key}")))?;
        storages.insert(key.as_str(), data);
        offset = data_end;
    }

    infos
        .into_iter()
        .map(|info| {
            let key = info.path.trim_start_matches('/');
            let data = storages.get(key).ok_or_else(|| {
                err(format!(
                    "tensor {} refers to missing storage {key}",
                    info.name
                ))
            })?;
            let tensor = super::tensor_from_storage(&info, data)?;
            Ok((info.name, tensor))
        })
        .collect::<candle_core::Result<_>>()
        .map(|tensors| (tensors, two_sets))
}

/// Bytes of a legacy checkpoint holding `tensors` (f32 only), as torch 1.4 writes them.
/// Used by tests to exercise the reader without a large fixture.
#[doc(hidden)]
pub fn write_for_tests(tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    fn unicode(out: &mut Vec<u8>, s: &str) {
        out.push(b'X');
        out.extend((s.len() as u32).to_le_bytes());
        out.extend(s.as_bytes());
    }
    fn int(out: &mut Vec<u8>, v: usize) {
        out.push(b'J');
        out.extend((v as i32).to_le_bytes());
    }
    fn ints(out: &mut Vec<u8>, vs: &[usize]) {
        out.push(b'(');
        for &v in vs {
            int(out, v);
        }
        out.push(b't');
    }
    let mut out = MAGIC_PICKLE.to_vec();
    out.extend([0x80, 0x02, b'M', 0xe9, 0x03, b'.']); // protocol version 1001
    out.extend([0x80, 0x02, b'}', b'.']); // sys_info (empty dict)
    out.extend([0x80, 0x02]);
    out.extend(b"ccollections\nOrderedDict\n)R(");
    for (i, (name, shape, _)) in tensors.iter().enumerate() {
        unicode(&mut out, name);
        out.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        out.extend(b"(");
        unicode(&mut out, "storage");
        out.extend(b"ctorch\nFloatStorage\n");
        unicode(&mut out, &format!("{}", 1000 + i));
        unicode(&mut out, "cpu");
        int(&mut out, shape.iter().product());
        out.extend(b"Ntq");
        out.push(i as u8);
        out.push(b'Q'); // BINPERSID
        int(&mut out, 0);
        ints(&mut out, shape);
        let strides: Vec<usize> = (0..shape.len())
            .map(|d| shape[d + 1..].iter().product())
            .collect();
        ints(&mut out, &strides);
        out.extend([0x89, b'}', b't', b'R']); // requires_grad=False, hooks={}, tuple, reduce
    }
    out.extend(b"u.");
    out.extend([0x80, 0x02, b']', b'(']);
    for i in 0..tensors.len() {
        unicode(&mut out, &format!("{}", 1000 + i));
    }
    out.extend(b"e.");
    for (_, _, data) in tensors {
        out.extend((data.len() as u64).to_le_bytes());
        for v in data {
            out.extend(v.to_le_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn reads_what_torch_legacy_writer_lays_out() {
        let bytes = write_for_tests(&[
            ("conv.weight", vec![2, 1, 1, 2], vec![1.0, 2.0, 3.0, 4.0]),
            ("conv.bias", vec![2], vec![-1.5, 0.25]),
        ]);
        let tensors: HashMap<_, _> = read(&bytes).unwrap().0.into_iter().collect();
        assert_eq!(tensors.len(), 2);
        let w = &tensors["conv.weight"];
        assert_eq!(w.dims(), &[2, 1, 1, 2]);
        assert_eq!(w.dtype(), DType::F32);
        assert_eq!(
            w.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [1.0, 2.0, 3.0, 4.0]
        );
        assert_eq!(tensors["conv.bias"].to_vec1::<f32>().unwrap(), [-1.5, 0.25]);
    }

    #[test]
    fn truncated_storage_is_an_error_not_a_panic() {
        let bytes = write_for_tests(&[("w", vec![4], vec![1.0, 2.0, 3.0, 4.0])]);
        for cut in [bytes.len() - 1, bytes.len() - 17, 20, 15, 3] {
            assert!(read(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
