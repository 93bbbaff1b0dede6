//! Local LoRA folders: real LyCORIS files from ../shared/fixtures/loras (that test skips without
//! them, see `stylus-test-data`) plus small files written here (kohya SD1/SD2/SDXL layouts,
//! sidecars, broken headers), and the FolderLocator.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use stylus_core::{AdapterFile, AdapterId, BaseModel, WeightedAdapter};
use stylus_refiner::locator::FolderLocator;
use stylus_refiner::lora_folder::{
    MAX_HEADER_BYTES, detect_base_model, entry_from_lora_file, read_header, read_lora_folder,
};

/// `../shared/fixtures/loras`, or `None` (the test is skipped) without it.
fn fixtures() -> Option<PathBuf> {
    stylus_test_data::shared("fixtures/loras")
}

/// Writes a safetensors file with zero-filled F16 tensors of the given shapes.
fn write_safetensors(path: &Path, metadata: &[(&str, &str)], tensors: &[(&str, &[usize])]) {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let meta: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        header.insert("__metadata__".into(), meta.into());
    }
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let bytes = 2 * shape.iter().product::<usize>();
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let json = serde_json::to_vec(&header).unwrap();
    let mut file = (json.len() as u64).to_le_bytes().to_vec();
    file.extend(json);
    file.extend(vec![0u8; offset]);
    std::fs::write(path, file).unwrap();
}

fn kohya_sd1(path: &Path, metadata: &[(&str, &str)]) {
    write_safetensors(
        path,
        metadata,
        &[
            (
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.alpha",
                &[],
            ),
            (
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight",
                &[4, 768],
            ),
            (
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight",
                &[320, 4],
            ),
        ],
    );
}

#[test]
fn real_lokr_fixture_header_hash_and_base_model() {
    let Some(fixtures) = fixtures() else { return };
    let path = fixtures.join("smart_falcon_4_lokr.safetensors");
    let header = read_header(&path).unwrap();
    assert_eq!(header.tensors.len(), 1750);
    assert!(!header.metadata.contains_key("ss_base_model_version"));
    // No base-model key: the LoKr factors of attn2.to_k give a 768-wide context, SD 1.x.
    assert_eq!(detect_base_model(&header), Some(BaseModel::Sd1));

    let entry = entry_from_lora_file(&path).unwrap();
    let card = &entry.card;
    // kohya's sshs_model_hash is the sha256 of the bytes after the header (see SOURCES.md).
    assert_eq!(
        card.id,
        AdapterId::local_from_sha256(&header.metadata["sshs_model_hash"])
    );
    assert_eq!(
        card.file.as_ref().unwrap().sha256.as_deref(),
        Some("86c94ad35cf53921f26c7888f018324753813189f5baf504aff03f31c5bbf734")
    );
    assert_eq!(card.alias.as_deref(), Some("smart_falcon_lokr_3.0e-4"));
    assert_eq!(card.title, "smart_falcon_lokr_3.0e-4");
    assert!(
        card.tags.iter().any(|t| t == "smart falcon (umamusume)"),
        "{:?}",
        card.tags
    );
    assert!(card.tags.len() <= 20);
    assert!(card.description.contains("trigger word is smart falcon"));
    assert!(entry.has_sd15_safetensors);
}

#[test]
fn base_model_from_metadata_and_tensor_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let base = |name: &str, metadata: &[(&str, &str)], tensors: &[(&str, &[usize])]| {
        let path = dir.path().join(name);
        write_safetensors(&path, metadata, tensors);
        detect_base_model(&read_header(&path).unwrap())
    };
    let to_k = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight";
    assert_eq!(
        base("sd1.safetensors", &[], &[(to_k, &[8, 768])]),
        Some(BaseModel::Sd1)
    );
    assert_eq!(
        base("sd2.safetensors", &[], &[(to_k, &[8, 1024])]),
        Some(BaseModel::Sd2)
    );
    assert_eq!(
        base("xl.safetensors", &[], &[(to_k, &[8, 2048])]),
        Some(BaseModel::Sdxl)
    );
    assert_eq!(
        base(
            "te2.safetensors",
            &[],
            &[(
                "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                &[8, 1280]
            )]
        ),
        Some(BaseModel::Sdxl)
    );
    let peft = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.lora_A.weight";
    assert_eq!(
        base("peft.safetensors", &[], &[(peft, &[4, 768])]),
        Some(BaseModel::Sd1)
    );
    assert_eq!(
        base(
            "te.safetensors",
            &[],
            &[(
                "lora_te_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight",
                &[4, 1024]
            )]
        ),
        Some(BaseModel::Sd2)
    );
    // Metadata wins over shapes.
    assert_eq!(
        base(
            "meta.safetensors",
            &[("ss_base_model_version", "sdxl_base_v1-0")],
            &[(to_k, &[8, 768])]
        ),
        Some(BaseModel::Sdxl)
    );
    assert_eq!(
        base(
            "spec.safetensors",
            &[("modelspec.architecture", "stable-diffusion-v1/lora")],
            &[]
        ),
        Some(BaseModel::Sd1)
    );
    assert_eq!(
        base("v2.safetensors", &[("ss_v2", "True")], &[]),
        Some(BaseModel::Sd2)
    );
    assert_eq!(base("none.safetensors", &[], &[]), None);
}

#[test]
fn sidecars_add_civitai_and_a1111_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("paper_cut.safetensors");
    kohya_sd1(
        &path,
        &[
            ("ss_output_name", "papercut_v2"),
            (
                "ss_tag_frequency",
                "{\"10_cut\": {\"paper\": 5, \"cut\": 9}}",
            ),
        ],
    );
    std::fs::write(
        dir.path().join("paper_cut.civitai.info"),
        serde_json::json!({
            "id": 777, "modelId": 4321, "baseModel": "SD 1.5", "trainedWords": ["papercut"],
            "description": "<p>Paper &amp; scissors</p>",
            "downloadUrl": "https://civitai.com/api/download/models/777",
            "model": {"name": "Paper Cut Style", "type": "LORA", "nsfw": false, "poi": false},
            "images": [{"url": "https://x/1.png", "meta": {"prompt": "a fox, <lora:papercut_v2:0.6>"}}, {"url": "u2", "meta": null}]
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("paper_cut.json"),
        r#"{"description": "layered paper", "sd version": "SD1", "activation text": "papercut, layered", "preferred weight": 0.7, "notes": ""}"#,
    )
    .unwrap();
    let card = entry_from_lora_file(&path).unwrap().card;
    assert_eq!(card.id, AdapterId::Civitai(4321));
    assert_eq!(card.version_id, Some(777));
    assert_eq!(card.title, "Paper Cut Style");
    assert_eq!(card.alias.as_deref(), Some("papercut_v2"));
    assert_eq!(card.base_model, Some(BaseModel::Sd1));
    assert_eq!(card.trigger_words, ["papercut", "layered"]);
    assert_eq!(card.tags, ["cut", "paper"]);
    assert_eq!(card.sample_prompts, ["a fox, <lora:papercut_v2:0.6>"]);
    assert_eq!(card.image_count, 2);
    assert!(
        card.description
            .starts_with("Paper & scissors\nlayered paper")
    );
    assert!(card.description.contains("Preferred weight: 0.7"));
    let file = card.file.unwrap();
    assert_eq!(
        file.download_url.as_deref(),
        Some("https://civitai.com/api/download/models/777")
    );
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(file.sha256.unwrap(), hex::encode(Sha256::digest(&bytes)));

    // A broken sidecar is an error for this file, naming the sidecar.
    std::fs::write(dir.path().join("paper_cut.json"), "{\"description\": ").unwrap();
    let err = entry_from_lora_file(&path).unwrap_err().to_string();
    assert!(err.contains("paper_cut.json"), "{err}");
}

#[test]
fn bad_files_are_errors_for_that_file_only() {
    let dir = tempfile::tempdir().unwrap();
    kohya_sd1(&dir.path().join("good.safetensors"), &[]);
    std::fs::write(dir.path().join("short.safetensors"), [1u8, 2, 3]).unwrap();
    let mut truncated = 5000u64.to_le_bytes().to_vec();
    truncated.extend(b"{\"a\":");
    std::fs::write(dir.path().join("truncated.safetensors"), truncated).unwrap();
    let mut huge = (MAX_HEADER_BYTES + 1).to_le_bytes().to_vec();
    huge.extend(b"{}");
    std::fs::write(dir.path().join("huge.safetensors"), huge).unwrap();
    let json = b"{\"__metadata__\": {\"ss_output_name\": \"caf\xe9\"}}";
    let mut latin1 = (json.len() as u64).to_le_bytes().to_vec();
    latin1.extend(json);
    std::fs::write(dir.path().join("latin1.safetensors"), latin1).unwrap();
    let json = b"{\"__metadata__\": {\"ss_epoch\": 10}}";
    let mut number = (json.len() as u64).to_le_bytes().to_vec();
    number.extend(json);
    std::fs::write(dir.path().join("number.safetensors"), number).unwrap();

    let read = read_lora_folder(dir.path());
    assert_eq!(read.items_read, 6);
    assert_eq!(read.entries.len(), 1);
    let errors: BTreeMap<String, String> = read
        .malformed
        .iter()
        .map(|e| {
            let text = e.to_string();
            let file = text
                .split(':')
                .next()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_string();
            (file, text)
        })
        .collect();
    assert!(
        errors["short.safetensors"].contains("truncated"),
        "{errors:?}"
    );
    assert!(
        errors["truncated.safetensors"].contains("truncated header"),
        "{errors:?}"
    );
    assert!(errors["huge.safetensors"].contains("limit"), "{errors:?}");
    assert!(
        errors["latin1.safetensors"].contains("not UTF-8"),
        "{errors:?}"
    );
    assert!(
        errors["number.safetensors"].contains("ss_epoch"),
        "{errors:?}"
    );
}

#[test]
fn folder_locator_finds_files_by_name_alias_and_hash() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("styles");
    std::fs::create_dir(&nested).unwrap();
    let path = nested.join("Ink_Wash.safetensors");
    kohya_sd1(&path, &[("ss_output_name", "ink")]);
    let other = dir.path().join("renamed.safetensors");
    kohya_sd1(&other, &[("ss_output_name", "other")]);
    let sha = hex::encode(Sha256::digest(std::fs::read(&other).unwrap()));
    let locator = FolderLocator::new(dir.path()).unwrap();
    let locate = |adapter: &WeightedAdapter| {
        locator
            .locate_blocking(adapter)
            .map(|found| found.map(|f| f.path))
    };

    let adapter = |alias: &str, file: Option<AdapterFile>| WeightedAdapter {
        id: AdapterId::Civitai(1),
        title: "t".into(),
        alias: alias.into(),
        weight: 0.5,
        category: None,
        trigger_words: vec![],
        file,
    };
    assert_eq!(
        locate(&adapter("ink_wash", None)).unwrap(),
        Some(path.clone())
    );
    let named = AdapterFile {
        name: "ink_wash.safetensors".into(),
        ..AdapterFile::default()
    };
    assert_eq!(
        locate(&adapter("x", Some(named))).unwrap(),
        Some(path.clone())
    );
    // Same name, different hash: another version of the file, not a match, unless the hash
    // finds the right file under another name.
    let by_hash = AdapterFile {
        name: "ink_wash.safetensors".into(),
        sha256: Some(sha.to_uppercase()),
        ..AdapterFile::default()
    };
    assert_eq!(
        locate(&adapter("ink_wash", Some(by_hash))).unwrap(),
        Some(other.clone())
    );
    let wrong = AdapterFile {
        name: "ink_wash.safetensors".into(),
        sha256: Some("0".repeat(64)),
        ..AdapterFile::default()
    };
    assert_eq!(locate(&adapter("ink_wash", Some(wrong))).unwrap(), None);
    assert_eq!(locate(&adapter("missing", None)).unwrap(), None);

    // Local ids carry the sshs_model_hash.
    let entry = entry_from_lora_file(&other).unwrap();
    let mut local = adapter("nothing", None);
    local.id = entry.card.id.clone();
    assert_eq!(locate(&local).unwrap(), Some(other.clone()));
    // A file found by its hash comes with it: nobody hashes it again.
    let found = locator.locate_blocking(&local).unwrap().unwrap();
    assert_eq!(
        found.tensor_sha256.as_deref(),
        local.id.to_string().strip_prefix("sha256:")
    );
}
