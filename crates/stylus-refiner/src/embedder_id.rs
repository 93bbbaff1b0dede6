//! Embedder ids: stores remember the id of the model that embedded them and refuse to mix ids.

/// Whether two embedder ids name the same model. Ids of stores written before the id named the
/// model (`bert:FOLDER:POOLING:LEN:sha256-W`) match by pooling, length and weights digest.
pub fn same_embedder(a: &str, b: &str) -> bool {
    fn key(id: &str) -> Option<(&str, &str, &str)> {
        let parts: Vec<&str> = id.split(':').collect();
        match parts.as_slice() {
            ["bert", pooling, len, weights, config] if config.starts_with("config-") => {
                Some((pooling, len, weights))
            }
            ["bert", _folder, pooling, len, weights] if weights.starts_with("sha256-") => {
                Some((pooling, len, weights))
            }
            _ => None,
        }
    }
    if a == b {
        return true;
    }
    match (key(a), key(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedder_ids_name_the_model_not_its_folder() {
        let new = "bert:mean:256:sha256-53aa51172d14:config-0123abcd";
        assert!(same_embedder(new, new));
        // A store written when the id held the folder name opens with the same weights.
        assert!(same_embedder(
            "bert:all-MiniLM-L6-v2:mean:256:sha256-53aa51172d14",
            new
        ));
        assert!(same_embedder(
            new,
            "bert:sentence-transformers/all-MiniLM-L6-v2:mean:256:sha256-53aa51172d14"
        ));
        assert!(!same_embedder("bert:x:mean:256:sha256-ffffffffffff", new));
        assert!(!same_embedder("bert:x:cls:256:sha256-53aa51172d14", new));
        assert!(!same_embedder("lexical-tfidf-v1:dim=4096:idf=1", new));
    }
}
