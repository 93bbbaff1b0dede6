//! Civitai model cards: `GET /api/v1/models` items, as a JSON array, a paged `{items, metadata}`
//! response, a single item, or JSONL (one item per line).
//!
//! Catalog text is untrusted input and the API's shape drifted over the years, so parsing is
//! tolerant: only `id`, `name` and `type` are required. Any other field may be missing, `null` or
//! of the wrong type; a wrong type is ignored with a debug log. A line or item that is not JSON, or
//! lacks a required field, becomes a [`StylusError::Json`] naming the file and line, and reading
//! goes on.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use stylus_core::{
    AdapterCard, AdapterFile, AdapterId, AdapterStats, BaseModel, Result, StylusError,
};

use crate::html::html_to_text;

/// The Civitai `baseModel` string the paper's filter keeps.
pub const SD15_BASE_MODEL: &str = "SD 1.5";

/// One catalog entry: the card plus the facts the filters need that the card does not carry.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogEntry {
    pub card: AdapterCard,
    /// Where it came from (`file:line`, `file[item]` or a LoRA file path), for messages.
    pub origin: String,
    /// Some version has base model exactly "SD 1.5" (the paper's test; SD 1.4 does not count)
    /// and a `.safetensors` file. For local files: an SD 1.x `.safetensors` file.
    pub has_sd15_safetensors: bool,
}

/// What reading catalog files produced: the entries, and one error per malformed line or item.
#[derive(Debug, Default)]
pub struct CatalogRead {
    pub entries: Vec<CatalogEntry>,
    /// Malformed lines/items (`StylusError::Json` with file and line) and unreadable files.
    pub malformed: Vec<StylusError>,
    /// Items seen (parsed or malformed): `entries.len() + malformed items`.
    pub items_read: usize,
}

impl CatalogRead {
    /// Appends another read.
    pub fn extend(&mut self, other: CatalogRead) {
        self.entries.extend(other.entries);
        self.malformed.extend(other.malformed);
        self.items_read += other.items_read;
    }
}

/// Reads Civitai JSON from files and directories (directories recursively, `*.json` and
/// `*.jsonl` files in sorted path order). An unreadable file is counted as one malformed item.
pub fn read_civitai_paths(paths: &[PathBuf]) -> CatalogRead {
    let mut read = CatalogRead::default();
    for path in paths {
        let files = if path.is_dir() {
            match catalog_files_in(path) {
                Ok(files) => files,
                Err(err) => {
                    read.malformed.push(err);
                    read.items_read += 1;
                    continue;
                }
            }
        } else {
            vec![path.clone()]
        };
        for file in files {
            match std::fs::read(&file) {
                Ok(bytes) => read.extend(parse_civitai_bytes(&file, &bytes)),
                Err(e) => {
                    read.malformed.push(StylusError::io(&file, e));
                    read.items_read += 1;
                }
            }
        }
    }
    read
}

/// The `*.json` / `*.jsonl` files under `dir`, recursively, sorted by path.
pub fn catalog_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current).map_err(|e| StylusError::io(&current, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StylusError::io(&current, e))?;
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("json" | "jsonl")
            ) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Parses one file's bytes. `.jsonl` files are read line by line; other files as one JSON
/// document (array, paged response or single item), falling back to JSONL when the whole text is
/// not one document but has several lines.
pub fn parse_civitai_bytes(path: &Path, bytes: &[u8]) -> CatalogRead {
    let is_jsonl = path.extension().and_then(|e| e.to_str()) == Some("jsonl");
    if !is_jsonl {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(document) => return parse_document(path, document),
            Err(err) => {
                let multi_line = bytes.iter().filter(|&&b| b == b'\n').nth(1).is_some();
                if !multi_line {
                    return CatalogRead {
                        malformed: vec![json_error(path, Some(err.line()), err.to_string())],
                        items_read: 1,
                        ..CatalogRead::default()
                    };
                }
            }
        }
    }
    parse_jsonl(path, bytes)
}

/// Parses JSONL: every non-blank line is one item (or a paged response of items).
fn parse_jsonl(path: &Path, bytes: &[u8]) -> CatalogRead {
    let mut read = CatalogRead::default();
    for (index, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_no = index + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let value = match serde_json::from_slice::<Value>(line) {
            Ok(value) => value,
            Err(err) => {
                read.malformed
                    .push(json_error(path, Some(line_no), err.to_string()));
                read.items_read += 1;
                continue;
            }
        };
        match items_of(value) {
            Some(items) => {
                for item in items {
                    read.items_read += 1;
                    match card_from_item(&item) {
                        Ok((card, has_sd15_safetensors)) => read.entries.push(CatalogEntry {
                            card,
                            origin: format!("{}:{line_no}", path.display()),
                            has_sd15_safetensors,
                        }),
                        Err(message) => {
                            read.malformed
                                .push(json_error(path, Some(line_no), message))
                        }
                    }
                }
            }
            None => {
                read.items_read += 1;
                read.malformed.push(json_error(
                    path,
                    Some(line_no),
                    "expected a model object or a paged {items, metadata} response".into(),
                ));
            }
        }
    }
    read
}

/// Parses a whole JSON document.
fn parse_document(path: &Path, document: Value) -> CatalogRead {
    let mut read = CatalogRead::default();
    let Some(items) = items_of(document) else {
        read.items_read = 1;
        read.malformed.push(json_error(
            path,
            None,
            "expected a model array, a paged {items, metadata} response or a model object".into(),
        ));
        return read;
    };
    for (index, item) in items.into_iter().enumerate() {
        read.items_read += 1;
        match card_from_item(&item) {
            Ok((card, has_sd15_safetensors)) => read.entries.push(CatalogEntry {
                card,
                origin: format!("{}[{index}]", path.display()),
                has_sd15_safetensors,
            }),
            Err(message) => {
                read.malformed
                    .push(json_error(path, None, format!("item {index}: {message}")))
            }
        }
    }
    read
}

/// The model items of a document: an array, `{items: [...]}`, or a single model object.
pub fn items_of(document: Value) -> Option<Vec<Value>> {
    match document {
        Value::Array(items) => Some(items),
        Value::Object(mut object) => match object.remove("items") {
            Some(Value::Array(items)) => Some(items),
            Some(other) => {
                // `items` of the wrong type: not a page; maybe a model with an odd field.
                object.insert("items".into(), other);
                object
                    .contains_key("id")
                    .then(|| vec![Value::Object(object)])
            }
            None => object
                .contains_key("id")
                .then(|| vec![Value::Object(object)]),
        },
        _ => None,
    }
}

fn json_error(path: &Path, line: Option<usize>, message: String) -> StylusError {
    StylusError::Json {
        path: path.to_path_buf(),
        line,
        message,
        source: None,
    }
}

/// Builds a card from one `api/v1/models` item. Returns the card and whether some version is
/// "SD 1.5" with a `.safetensors` file; `Err` names the missing or mistyped required field.
///
/// The chosen version is the newest "SD 1.5" version with a `.safetensors` file (Civitai lists
/// versions newest first), else the newest version. Sample prompts and images come from every
/// version, the chosen one first (the paper asks `/api/v1/images?modelId=` for the model's
/// images, not one version's).
pub fn card_from_item(item: &Value) -> Result<(AdapterCard, bool), String> {
    let object = item
        .as_object()
        .ok_or_else(|| "expected a JSON object".to_string())?;
    let id = match object.get("id") {
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| format!("field `id`: expected a non-negative integer, got {n}"))?,
        Some(other) => return Err(format!("field `id`: expected an integer, got {other}")),
        None => return Err("missing field `id`".into()),
    };
    let name = required_str(object, "name")?;
    let adapter_type = required_str(object, "type")?;
    let ctx = Ctx { id };

    let mut card = AdapterCard::new(AdapterId::Civitai(id), name, adapter_type);
    card.nsfw = ctx.bool(object, "nsfw").unwrap_or(false);
    card.poi = ctx.bool(object, "poi").unwrap_or(false);
    card.tags = ctx.strings(object, "tags");
    card.description = ctx
        .str(object, "description")
        .map(html_to_text)
        .unwrap_or_default();
    if let Some(stats) = ctx.object(object, "stats") {
        card.stats = AdapterStats {
            downloads: ctx.u64(stats, "downloadCount").unwrap_or(0),
            favorites: ctx
                .u64(stats, "favoriteCount")
                .or_else(|| ctx.u64(stats, "thumbsUpCount"))
                .unwrap_or(0),
            rating: ctx.f64(stats, "rating").unwrap_or(0.0) as f32,
            rating_count: ctx.u64(stats, "ratingCount").unwrap_or(0),
        };
    }

    let versions: Vec<&Map<String, Value>> = match object.get("modelVersions") {
        Some(Value::Array(versions)) => versions
            .iter()
            .filter_map(|v| {
                let version = v.as_object();
                if version.is_none() {
                    ctx.odd("modelVersions[]", v);
                }
                version
            })
            .collect(),
        Some(Value::Null) | None => Vec::new(),
        Some(other) => {
            ctx.odd("modelVersions", other);
            Vec::new()
        }
    };
    let sd15_with_safetensors = |version: &Map<String, Value>| {
        ctx.str(version, "baseModel") == Some(SD15_BASE_MODEL)
            && safetensors_file(&ctx, version).is_some()
    };
    let chosen = versions
        .iter()
        .position(|v| sd15_with_safetensors(v))
        .or(if versions.is_empty() { None } else { Some(0) });
    let has_sd15_safetensors = chosen.is_some_and(|i| sd15_with_safetensors(versions[i]));

    if let Some(chosen) = chosen {
        let version = versions[chosen];
        card.version_id = ctx.u64(version, "id");
        card.base_model = ctx.str(version, "baseModel").map(BaseModel::parse);
        card.trigger_words = ctx
            .strings(version, "trainedWords")
            .into_iter()
            .map(|w| w.trim().trim_end_matches(',').trim().to_string())
            .filter(|w| !w.is_empty())
            .collect();
        card.file = safetensors_file(&ctx, version).or_else(|| first_file(&ctx, version));
        card.alias = card.file.as_ref().and_then(|f| file_stem(&f.name));

        let order = std::iter::once(chosen).chain((0..versions.len()).filter(|&i| i != chosen));
        for index in order {
            let Some(images) = ctx.array(versions[index], "images") else {
                continue;
            };
            for image in images {
                let Some(image) = image.as_object() else {
                    ctx.odd("images[]", image);
                    continue;
                };
                card.image_count += 1;
                if let Some(url) = ctx.str(image, "url") {
                    card.sample_images.push(url.to_string());
                }
                // The raw API nests the prompt in `meta`; the slim dump has it at the top.
                let prompt = ctx
                    .str(image, "prompt")
                    .or_else(|| ctx.object(image, "meta").and_then(|m| ctx.str(m, "prompt")));
                if let Some(prompt) = prompt.map(str::trim).filter(|p| !p.is_empty())
                    && !card.sample_prompts.iter().any(|p| p == prompt)
                {
                    card.sample_prompts.push(prompt.to_string());
                }
            }
        }
    }
    Ok((card, has_sd15_safetensors))
}

/// The first `.safetensors` file of a version.
fn safetensors_file(ctx: &Ctx, version: &Map<String, Value>) -> Option<AdapterFile> {
    ctx.array(version, "files")?
        .iter()
        .filter_map(|f| f.as_object())
        .filter_map(|f| adapter_file(ctx, f))
        .find(|f| f.name.to_ascii_lowercase().ends_with(".safetensors"))
}

/// The first file of a version, whatever its format.
fn first_file(ctx: &Ctx, version: &Map<String, Value>) -> Option<AdapterFile> {
    ctx.array(version, "files")?
        .iter()
        .filter_map(|f| f.as_object())
        .find_map(|f| adapter_file(ctx, f))
}

fn adapter_file(ctx: &Ctx, file: &Map<String, Value>) -> Option<AdapterFile> {
    let name = ctx.str(file, "name")?.trim();
    if name.is_empty() {
        return None;
    }
    // The slim dump has `sha256` at the top; the raw API has `hashes.SHA256`.
    let sha256 = ctx
        .str(file, "sha256")
        .or_else(|| {
            ctx.object(file, "hashes")
                .and_then(|h| ctx.str(h, "SHA256"))
        })
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase);
    Some(AdapterFile {
        name: name.to_string(),
        sha256,
        download_url: ctx.str(file, "downloadUrl").map(str::to_string),
        size_kb: ctx.f64(file, "sizeKB"),
    })
}

/// The file name without its last extension; `None` when that leaves nothing.
pub fn file_stem(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let stem = base.rsplit_once('.').map_or(base, |(stem, _)| stem).trim();
    (!stem.is_empty()).then(|| stem.to_string())
}

fn required_str(object: &Map<String, Value>, key: &str) -> Result<String, String> {
    match object.get(key) {
        Some(Value::String(s)) => Ok(s.trim().to_string()),
        Some(other) => Err(format!("field `{key}`: expected a string, got {other}")),
        None => Err(format!("missing field `{key}`")),
    }
}

/// Typed access to optional fields: missing or `null` is `None` silently; a wrong type is `None`
/// with a debug log naming the model and field.
struct Ctx {
    id: u64,
}

impl Ctx {
    fn odd(&self, key: &str, value: &Value) {
        let shown: String = value.to_string().chars().take(60).collect();
        tracing::debug!(model = self.id, field = key, value = %shown, "ignoring field of unexpected type");
    }

    fn get<'a>(&self, object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
        object.get(key).filter(|v| !v.is_null())
    }

    fn str<'a>(&self, object: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
        let value = self.get(object, key)?;
        let s = value.as_str();
        if s.is_none() {
            self.odd(key, value);
        }
        s
    }

    fn bool(&self, object: &Map<String, Value>, key: &str) -> Option<bool> {
        let value = self.get(object, key)?;
        let b = value.as_bool();
        if b.is_none() {
            self.odd(key, value);
        }
        b
    }

    fn u64(&self, object: &Map<String, Value>, key: &str) -> Option<u64> {
        let value = self.get(object, key)?;
        let n = value
            .as_u64()
            .or_else(|| value.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64));
        if n.is_none() {
            self.odd(key, value);
        }
        n
    }

    fn f64(&self, object: &Map<String, Value>, key: &str) -> Option<f64> {
        let value = self.get(object, key)?;
        let n = value.as_f64().filter(|f| f.is_finite());
        if n.is_none() {
            self.odd(key, value);
        }
        n
    }

    fn object<'a>(
        &self,
        object: &'a Map<String, Value>,
        key: &str,
    ) -> Option<&'a Map<String, Value>> {
        let value = self.get(object, key)?;
        let o = value.as_object();
        if o.is_none() {
            self.odd(key, value);
        }
        o
    }

    fn array<'a>(&self, object: &'a Map<String, Value>, key: &str) -> Option<&'a Vec<Value>> {
        let value = self.get(object, key)?;
        let a = value.as_array();
        if a.is_none() {
            self.odd(key, value);
        }
        a
    }

    /// A list of strings; non-string elements are skipped (logged), blanks dropped.
    fn strings(&self, object: &Map<String, Value>, key: &str) -> Vec<String> {
        let Some(values) = self.array(object, key) else {
            return Vec::new();
        };
        values
            .iter()
            .filter_map(|v| {
                let s = v.as_str();
                if s.is_none() {
                    self.odd(key, v);
                }
                s
            })
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn minimal_item_needs_only_id_name_type() {
        let (card, sd15) =
            card_from_item(&json!({"id": 7, "name": " X ", "type": "LORA"})).unwrap();
        assert_eq!(card.id, AdapterId::Civitai(7));
        assert_eq!(card.title, "X");
        assert!(!sd15);
        assert!(card.file.is_none() && card.sample_prompts.is_empty());
    }

    #[test]
    fn missing_or_mistyped_required_fields_are_errors() {
        assert!(
            card_from_item(&json!({"name": "x", "type": "LORA"}))
                .unwrap_err()
                .contains("`id`")
        );
        assert!(
            card_from_item(&json!({"id": "12", "name": "x", "type": "LORA"}))
                .unwrap_err()
                .contains("`id`")
        );
        assert!(
            card_from_item(&json!({"id": 1, "name": 3, "type": "LORA"}))
                .unwrap_err()
                .contains("`name`")
        );
        assert!(
            card_from_item(&json!({"id": 1, "name": "x"}))
                .unwrap_err()
                .contains("`type`")
        );
        assert!(card_from_item(&json!([1])).is_err());
    }

    #[test]
    fn wrong_types_in_optional_fields_are_ignored() {
        let item = json!({
            "id": 1, "name": "x", "type": "LORA", "nsfw": "no", "tags": ["a", 3, null, " b "],
            "description": 5, "stats": [], "modelVersions": [
                "junk",
                {"id": "v", "baseModel": "SD 1.5", "trainedWords": "word", "images": {"a": 1},
                 "files": [{"name": 4}, {"name": "ok.safetensors", "sha256": "zz", "sizeKB": "big"}]}
            ]
        });
        let (card, sd15) = card_from_item(&item).unwrap();
        assert!(sd15);
        assert!(!card.nsfw);
        assert_eq!(card.tags, ["a", "b"]);
        assert_eq!(card.description, "");
        assert_eq!(card.version_id, None);
        assert_eq!(card.alias.as_deref(), Some("ok"));
        let file = card.file.unwrap();
        assert_eq!((file.sha256, file.size_kb), (None, None));
    }

    #[test]
    fn chooses_newest_sd15_safetensors_version_and_collects_all_prompts() {
        let item = json!({"id": 1, "name": "x", "type": "LORA", "modelVersions": [
            {"id": 30, "baseModel": "SDXL 1.0", "files": [{"name": "xl.safetensors"}],
             "images": [{"url": "u3", "prompt": "xl prompt"}]},
            {"id": 20, "baseModel": "SD 1.5", "files": [{"name": "old.pt"}]},
            {"id": 10, "baseModel": "SD 1.5", "trainedWords": ["trig, "],
             "files": [{"name": "v1.safetensors", "sha256": "AB".repeat(32), "downloadUrl": "d"}],
             "images": [{"url": "u1", "meta": {"prompt": "a <lora:v1:0.7>"}}, {"url": "u2"}]}
        ]});
        let (card, sd15) = card_from_item(&item).unwrap();
        assert!(sd15);
        assert_eq!(card.version_id, Some(10));
        assert_eq!(card.base_model, Some(BaseModel::Sd1));
        assert_eq!(card.trigger_words, ["trig"]);
        assert_eq!(card.alias.as_deref(), Some("v1"));
        assert_eq!(card.file.as_ref().unwrap().sha256, Some("ab".repeat(32)));
        assert_eq!(card.sample_prompts, ["a <lora:v1:0.7>", "xl prompt"]);
        assert_eq!(card.sample_images, ["u1", "u2", "u3"]);
        assert_eq!(card.image_count, 3);
    }

    #[test]
    fn sd14_does_not_count_as_sd15() {
        let item = json!({"id": 1, "name": "x", "type": "LORA", "modelVersions": [
            {"id": 2, "baseModel": "SD 1.4", "files": [{"name": "a.safetensors"}]}]});
        let (card, sd15) = card_from_item(&item).unwrap();
        assert!(!sd15);
        assert_eq!(card.base_model, Some(BaseModel::Sd1));
    }

    #[test]
    fn jsonl_reports_malformed_lines_with_numbers() {
        let text = b"{\"id\": 1, \"name\": \"a\", \"type\": \"LORA\"}\n\n{not json\n{\"id\": 2}\n[1]\n{\"id\": 3, \"name\": \"c\", \"type\": \"LoCon\"}\n";
        let read = parse_civitai_bytes(Path::new("cards.jsonl"), text);
        assert_eq!(read.items_read, 5);
        assert_eq!(read.entries.len(), 2);
        assert_eq!(read.entries[1].origin, "cards.jsonl:6");
        let messages: Vec<String> = read.malformed.iter().map(|e| e.to_string()).collect();
        assert!(
            messages[0].starts_with("cards.jsonl:3: malformed JSON"),
            "{messages:?}"
        );
        assert!(messages[1].starts_with("cards.jsonl:4:") && messages[1].contains("`name`"));
        assert!(messages[2].starts_with("cards.jsonl:5:"), "{messages:?}");
    }

    #[test]
    fn array_page_and_single_object_documents() {
        let item = json!({"id": 1, "name": "a", "type": "LORA"});
        let array = serde_json::to_vec(&json!([item, {"id": 2}])).unwrap();
        let read = parse_civitai_bytes(Path::new("a.json"), &array);
        assert_eq!(
            (read.items_read, read.entries.len(), read.malformed.len()),
            (2, 1, 1)
        );
        assert!(read.malformed[0].to_string().contains("item 1"));

        let page =
            serde_json::to_vec(&json!({"items": [item], "metadata": {"nextCursor": "x"}})).unwrap();
        assert_eq!(
            parse_civitai_bytes(Path::new("p.json"), &page)
                .entries
                .len(),
            1
        );
        let single = serde_json::to_vec(&item).unwrap();
        assert_eq!(
            parse_civitai_bytes(Path::new("s.json"), &single)
                .entries
                .len(),
            1
        );

        let broken = parse_civitai_bytes(Path::new("b.json"), b"{\"id\": ");
        assert_eq!((broken.items_read, broken.malformed.len()), (1, 1));
        let scalar = parse_civitai_bytes(Path::new("n.json"), b"42");
        assert_eq!(scalar.malformed.len(), 1);
    }

    #[test]
    fn raw_api_fixtures_parse() {
        let Some(dir) = stylus_test_data::shared("data/civitai/raw_api_examples") else {
            return;
        };
        let read = read_civitai_paths(&[dir]);
        assert!(read.malformed.is_empty(), "{:?}", read.malformed);
        assert_eq!(read.entries.len(), 3);
        let by_id = |id| {
            read.entries
                .iter()
                .find(|e| e.card.id == AdapterId::Civitai(id))
                .unwrap()
        };
        let detail = by_id(58390);
        assert!(detail.has_sd15_safetensors);
        assert_eq!(detail.card.alias.as_deref(), Some("add_detail"));
        assert_eq!(
            detail.card.file.as_ref().unwrap().sha256.as_deref(),
            Some("47aaaf0d2945ca937151d61304946dd229b3f072140b85484bc93e38f2a6e2f7")
        );
        assert!(detail.card.image_count >= 1);
        assert!(!detail.card.sample_prompts.is_empty());
        assert!(!detail.card.description.contains('<'));
        let moxin = by_id(12597);
        assert!(moxin.has_sd15_safetensors);
        assert_eq!(moxin.card.alias.as_deref(), Some("MoXinV1"));
        assert!(!by_id(13090).has_sd15_safetensors);
    }
}
