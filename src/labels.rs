//! Class names: the built-in ImageNet-1k list (with WordNet ids), label files in the formats
//! people already have, and `label_names` from a model's config.json.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::hub::ConfigLabelNames;

/// ImageNet-1k, one `wnid<TAB>name` line per class index (torchvision's category names).
const IMAGENET: &str = include_str!("imagenet_classes.txt");

#[derive(Debug, Clone, PartialEq)]
pub struct Labels {
    names: Vec<String>,
    wnids: Vec<Option<String>>,
    /// Whether each name came with its class index (`index_to_name.json`), or there are
    /// none: fewer names than classes then leaves classes unnamed. In a list, the index is
    /// the position, and a count that differs from the model's shifts or mismatches names.
    indexed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LabelsError {
    #[error("cannot read labels file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("labels file {path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error(
        "{from} names {names} classes and the model has {classes}: the names would not \
         line up with the classes{hint}, so they are refused"
    )]
    Count {
        from: String,
        names: usize,
        classes: usize,
        hint: &'static str,
    },
}

/// Entries keyed by class index (`{"0": a, "2": b}`) as a list, `[a, gap(1), b]`.
fn by_class_index<T>(
    entries: impl IntoIterator<Item = (String, T)>,
    gap: impl Fn(usize) -> T,
) -> Result<Vec<T>, String> {
    let mut indexed = entries
        .into_iter()
        .map(|(k, v)| {
            let i: usize = k
                .parse()
                .map_err(|_| format!("key `{k}` is not a class index"))?;
            Ok((i, v))
        })
        .collect::<Result<Vec<_>, String>>()?;
    indexed.sort_by_key(|(i, _)| *i);
    let n = indexed.last().map_or(0, |(i, _)| i + 1);
    if n > 1_000_000 {
        return Err(format!("class index {} is implausibly large", n - 1));
    }
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    for (i, v) in indexed {
        out[i] = Some(v);
    }
    Ok(out
        .into_iter()
        .enumerate()
        .map(|(i, v)| v.unwrap_or_else(|| gap(i)))
        .collect())
}

fn looks_like_wnid(s: &str) -> bool {
    s.len() == 9 && s.starts_with('n') && s[1..].bytes().all(|b| b.is_ascii_digit())
}

impl Labels {
    pub fn imagenet() -> Self {
        let (wnids, names) = IMAGENET
            .lines()
            .map(|line| {
                let (wnid, name) = line.split_once('\t').unwrap_or(("", line));
                (Some(wnid.to_string()), name.to_string())
            })
            .unzip();
        Self {
            names,
            wnids,
            indexed: false,
        }
    }

    /// A list of names, class `i` the `i`-th.
    pub fn from_names(names: Vec<String>) -> Self {
        let wnids = vec![None; names.len()];
        Self {
            names,
            wnids,
            indexed: false,
        }
    }

    /// Names for a model that comes with none: ImageNet's for 1000 classes, else none.
    pub fn default_for(classes: usize) -> Self {
        if classes == 1000 {
            Self::imagenet()
        } else {
            Self::unnamed()
        }
    }

    /// No names: every class is shown as `class_N`.
    pub fn unnamed() -> Self {
        Self {
            indexed: true,
            ..Self::from_names(Vec::new())
        }
    }

    /// Refuse names that cannot be the model's (`source` says where they came from): a
    /// list whose length is not the class count, or indices past it. Fewer indexed names
    /// than classes are fine (the rest are `class_N`); `Ok(true)` says so.
    pub fn check_count(&self, classes: usize, source: &str) -> Result<bool, LabelsError> {
        let names = self.len();
        if names == classes || (self.indexed && names < classes) {
            return Ok(names < classes);
        }
        Err(LabelsError::Count {
            from: source.to_string(),
            names,
            classes,
            hint: if names == classes + 1 {
                " (one too many: a list with `background` first, as TensorFlow's 1001-class \
                 ones have?)"
            } else {
                ""
            },
        })
    }

    /// Labels from a model config's `label_names` and `label_descriptions` (timm's
    /// config.json). ImageNet-1k's WordNet ids in order become the built-in names; other
    /// names take their description where there is one (keeping a WordNet id as the id);
    /// classes a `label_names` map leaves out are `class_N`.
    pub fn from_config(
        names: &ConfigLabelNames,
        descriptions: &HashMap<String, String>,
    ) -> Result<Self, String> {
        let (names, indexed) = match names {
            ConfigLabelNames::List(names) => (names.clone(), false),
            ConfigLabelNames::ById(map) => {
                let names = by_class_index(map.clone(), |i| format!("class_{i}"))?;
                (names, true)
            }
        };
        let imagenet = Self::imagenet();
        if names.len() == imagenet.len()
            && names
                .iter()
                .zip(&imagenet.wnids)
                .all(|(n, w)| w.as_deref() == Some(n))
        {
            return Ok(Self {
                indexed,
                ..imagenet
            });
        }
        // WordNet ids stay the ids when they are all there is (another label set) or when a
        // description names them.
        let all_wnids = names.iter().all(|n| looks_like_wnid(n));
        let (wnids, names) = names
            .into_iter()
            .map(|name| {
                let description = descriptions.get(&name);
                let wnid = (looks_like_wnid(&name) && (all_wnids || description.is_some()))
                    .then(|| name.clone());
                (wnid, description.cloned().unwrap_or(name))
            })
            .unzip();
        Ok(Self {
            names,
            wnids,
            indexed,
        })
    }

    /// Read a labels file:
    /// - plain text, one label per line (class index = line number, from 0);
    /// - TorchServe / Flask-tutorial `index_to_name.json`: `{"285": ["n02124075", "Egyptian_cat"]}`
    ///   or `{"285": "Egyptian_cat"}`;
    /// - a JSON list of names.
    pub fn from_file(path: &Path) -> Result<Self, LabelsError> {
        let text = std::fs::read_to_string(path).map_err(|source| LabelsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| LabelsError::Format {
            path: path.to_path_buf(),
            reason,
        })
    }

    fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim_start();
        if trimmed.starts_with('{') || trimmed.starts_with('[') {
            let value: serde_json::Value =
                serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
            return Self::from_json(value);
        }
        let names: Vec<String> = text
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect::<Vec<_>>();
        // A trailing newline is not an extra class.
        let names = match names.iter().rposition(|n| !n.is_empty()) {
            Some(last) => names[..=last].to_vec(),
            None => return Err("no labels in file".into()),
        };
        // Caffe's synset_words.txt and Kaggle's LOC_synset_mapping.txt: `wnid name` lines.
        let split_wnid = |line: &str| {
            line.split_once([' ', '\t'])
                .filter(|(id, name)| looks_like_wnid(id) && !name.trim().is_empty())
                .map(|(id, name)| (Some(id.to_string()), name.trim().to_string()))
        };
        if let Some(pairs) = names
            .iter()
            .map(|l| split_wnid(l))
            .collect::<Option<Vec<_>>>()
        {
            let (wnids, names) = pairs.into_iter().unzip();
            return Ok(Self {
                names,
                wnids,
                indexed: false,
            });
        }
        Ok(Self::from_names(names))
    }

    fn from_json(value: serde_json::Value) -> Result<Self, String> {
        use serde_json::Value;
        let entry = |v: &Value| -> Result<(Option<String>, String), String> {
            match v {
                Value::String(name) => Ok((None, name.clone())),
                Value::Array(parts) => match parts.as_slice() {
                    [Value::String(id), Value::String(name)] => {
                        Ok((Some(id.clone()), name.clone()))
                    }
                    [Value::String(name)] => Ok((None, name.clone())),
                    _ => Err(format!("expected [\"id\", \"name\"], got {v}")),
                },
                _ => Err(format!("expected a name or [\"id\", \"name\"], got {v}")),
            }
        };
        let indexed = matches!(value, Value::Object(_));
        let entries: Vec<(Option<String>, String)> = match value {
            Value::Array(items) => items.iter().map(entry).collect::<Result<_, _>>()?,
            Value::Object(map) => {
                let entries = map
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), entry(v)?)))
                    .collect::<Result<Vec<_>, String>>()?;
                let mut out = by_class_index(entries, |_| (None, String::new()))?;
                // Indices missing from the file (or named "") get a generic name.
                for (i, (_, name)) in out.iter_mut().enumerate() {
                    if name.is_empty() {
                        *name = format!("class_{i}");
                    }
                }
                out
            }
            _ => return Err("expected a JSON object or list".into()),
        };
        if entries.is_empty() {
            return Err("no labels in file".into());
        }
        let (wnids, names) = entries.into_iter().unzip();
        Ok(Self {
            names,
            wnids,
            indexed,
        })
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Name of class `index`; `class_<index>` when the list is shorter than the model.
    pub fn name(&self, index: usize) -> Cow<'_, str> {
        match self.names.get(index) {
            Some(n) => Cow::Borrowed(n),
            None => Cow::Owned(format!("class_{index}")),
        }
    }

    /// The id that came with the name (a WordNet id for ImageNet).
    pub fn id(&self, index: usize) -> Option<&str> {
        self.wnids.get(index).and_then(|w| w.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imagenet_is_complete() {
        let l = Labels::imagenet();
        assert_eq!(l.len(), 1000);
        assert_eq!(l.name(0), "tench");
        assert_eq!(l.name(282), "tiger cat");
        assert_eq!(l.id(285), Some("n02124075"));
        assert_eq!(l.name(1000), "class_1000");
    }

    #[test]
    fn index_to_name_json() {
        let l = Labels::parse(
            r#"{"0": ["n01440764", "tench"], "2": ["n01484850", "great_white_shark"]}"#,
        )
        .unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l.name(2), "great_white_shark");
        assert_eq!(l.id(2), Some("n01484850"));
        assert_eq!(l.name(1), "class_1");
        let l = Labels::parse(r#"{"1": "dog", "0": "cat"}"#).unwrap();
        assert_eq!((l.name(0), l.name(1)), ("cat".into(), "dog".into()));
    }

    #[test]
    fn a_count_that_cannot_line_up_is_refused() {
        let list = |n: usize| Labels::from_names((0..n).map(|i| format!("c{i}")).collect());
        assert!(!list(1000).check_count(1000, "x").unwrap());
        // TensorFlow-slim's 1001 names, `background` first: every name one class off.
        let err = list(1001)
            .check_count(1000, "labels file l.txt")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "labels file l.txt names 1001 classes and the model has 1000: the names would not \
             line up with the classes (one too many: a list with `background` first, as \
             TensorFlow's 1001-class ones have?), so they are refused"
        );
        assert!(list(10).check_count(1000, "x").is_err());
        assert!(Labels::parse(r#"["a", "b"]"#)
            .unwrap()
            .check_count(3, "x")
            .is_err());
        // Names with their indices may leave classes unnamed, but not name classes past
        // the model's.
        let indexed = Labels::parse(r#"{"0": "cat", "2": "dog"}"#).unwrap();
        assert!(indexed.check_count(5, "x").unwrap());
        assert!(indexed.check_count(2, "x").is_err());
        assert!(Labels::default_for(10).check_count(10, "x").unwrap());
        assert!(!Labels::default_for(1000).check_count(1000, "x").unwrap());
    }

    #[test]
    fn text_and_list() {
        let l = Labels::parse("cat\r\ndog\n\n").unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l.name(1), "dog");
        let l = Labels::parse(r#"["a", "b", "c"]"#).unwrap();
        assert_eq!(l.name(2), "c");
        assert!(Labels::parse("").is_err());
        // Caffe's synset_words.txt: the WordNet id is split off when every line has one.
        let l = Labels::parse("n01440764 tench, Tinca tinca\nn01443537\tgoldfish\n").unwrap();
        assert_eq!(
            (&*l.name(0), l.id(0)),
            ("tench, Tinca tinca", Some("n01440764"))
        );
        assert_eq!((&*l.name(1), l.id(1)), ("goldfish", Some("n01443537")));
        let l = Labels::parse("n01440764 tench\nred fox\n").unwrap();
        assert_eq!((&*l.name(0), l.id(0)), ("n01440764 tench", None));
        assert!(Labels::parse(r#"{"x": "cat"}"#).is_err());
        assert!(Labels::parse("{not json").is_err());
    }

    #[test]
    fn config_wnids_become_names() {
        let wnids: Vec<String> = (0..1000)
            .map(|i| Labels::imagenet().id(i).unwrap().to_string())
            .collect();
        let none = HashMap::new();
        let list = |names: Vec<String>| ConfigLabelNames::List(names);
        let imagenet = Labels::from_config(&list(wnids.clone()), &none).unwrap();
        assert_eq!(imagenet.name(282), "tiger cat");
        let custom = Labels::from_config(&list(vec!["healthy".into(), "rust".into()]), &none);
        assert_eq!(custom.unwrap().name(1), "rust");
        // timm's label_descriptions name what the label_names only identify (ImageNet-22k).
        let descriptions = HashMap::from([
            ("n00004475".to_string(), "organism, being".to_string()),
            ("n01440764".to_string(), "tench, Tinca tinca".to_string()),
        ]);
        let in22k = list(vec![
            "n00004475".into(),
            "n01440764".into(),
            "n99999999".into(),
        ]);
        let l = Labels::from_config(&in22k, &descriptions).unwrap();
        assert_eq!(
            (&*l.name(0), l.id(0)),
            ("organism, being", Some("n00004475"))
        );
        assert_eq!((&*l.name(2), l.id(2)), ("n99999999", Some("n99999999")));
        // ImageNet-1k in order keeps the built-in names even with descriptions given.
        let l = Labels::from_config(&list(wnids), &descriptions).unwrap();
        assert_eq!(l.name(0), "tench");
        // A map from class index to name, with a gap.
        let by_id: ConfigLabelNames =
            serde_json::from_str(r#"{"0": "healthy", "2": "rust"}"#).unwrap();
        let l = Labels::from_config(&by_id, &none).unwrap();
        assert_eq!((&*l.name(1), &*l.name(2)), ("class_1", "rust"));
        assert!(!l.check_count(3, "x").unwrap());
        assert!(
            l.check_count(5, "x").unwrap(),
            "classes past the map: class_N, a warning"
        );
        let bad: ConfigLabelNames = serde_json::from_str(r#"{"first": "cat"}"#).unwrap();
        assert!(Labels::from_config(&bad, &none)
            .unwrap_err()
            .contains("`first`"));
    }
}
