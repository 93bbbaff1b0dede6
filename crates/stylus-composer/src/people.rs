//! Characters, celebrities and real people. Both composers use such an adapter only when the
//! prompt asks for it (`ComposerConfig::block_characters`); this is that one rule, so the local
//! and the LLM composer agree on it.

use stylus_core::AdapterDoc;

/// Characters, celebrities, and cards Civitai flags as a real person ("person of interest").
pub fn is_person(doc: &AdapterDoc) -> bool {
    doc.category.is_person() || doc.card.poi
}

/// True when the prompt (its lower-cased words, in order) asks for this character or person: it
/// uses a word like "character" or "celebrity", or it names them. Naming means the person's name
/// (the name in the title, [`title_name`], without descriptors like "man", "girl" or "90s")
/// appears as a run of prompt words, or a trigger word that names them does (it holds the whole
/// name, or is a `_`-joined token made from a word of it: "miku_outfit" for Hatsune Miku).
/// Generic trigger words ("a man", "silver hair", "robot") never name anyone: a prompt about a man
/// does not ask for Walter White.
pub fn asks_for(prompt_words: &[String], doc: &AdapterDoc) -> bool {
    if prompt_words
        .iter()
        .any(|w| PERSON_WORDS.contains(&w.as_str()))
    {
        return true;
    }
    let name = person_name(&doc.card.title);
    if name.is_empty() {
        return false;
    }
    let contains_run = |haystack: &[String], run: &[String]| {
        !run.is_empty() && haystack.windows(run.len()).any(|window| window == run)
    };
    contains_run(prompt_words, &name)
        || doc.card.trigger_words.iter().any(|raw| {
            let trigger = lower_words(raw);
            // A trigger names the person when it holds the whole name, or is one token made
            // for them from a word of it ("miku_outfit" for Hatsune Miku). A descriptive trigger
            // ("silver hair") or a common word that happens to be in the name ("robot" for
            // "Atomic Heart Robot Maid") does not.
            let names = name.iter().all(|w| trigger.contains(w))
                || (raw.contains('_')
                    && !raw.trim().contains(' ')
                    && trigger.iter().any(|w| name.contains(w)))
                || is_made_up_token(raw);
            names && contains_run(prompt_words, &trigger)
        })
}

/// A trigger made up for one adapter: a single token that starts with a letter and has digits
/// ("hmn1", "nahida3") or a capital after its first letter beside lower-case ones ("HibanaFF",
/// "AmeriA", "SteamPunkAI"). No common word looks like that, so a prompt that says it asks for
/// that adapter. Counts and sizes ("1girl", "2boys", "4k") start with their digits and are not;
/// acronyms ("NASA") have no lower-case letter.
pub(crate) fn is_made_up_token(trigger: &str) -> bool {
    let token = trigger.trim();
    let inner_capital =
        token.chars().skip(1).any(char::is_uppercase) && token.chars().any(char::is_lowercase);
    token.chars().next().is_some_and(char::is_alphabetic)
        && token.chars().count() >= 3
        && token.chars().all(char::is_alphanumeric)
        && (token.chars().any(|c| c.is_ascii_digit()) || inner_capital)
}

/// The words of a person's name in an adapter title: [`title_name`] without the words that
/// describe rather than name ("90s Keanu Reeves" -> "keanu reeves"; "Old Man" -> nothing).
pub fn person_name(title: &str) -> Vec<String> {
    title_name(title)
        .into_iter()
        .filter(|w| !is_person_descriptor(w))
        .collect()
}

fn is_person_descriptor(word: &str) -> bool {
    const DESCRIPTORS: [&str; 40] = [
        "man",
        "men",
        "woman",
        "women",
        "girl",
        "girls",
        "boy",
        "boys",
        "lady",
        "guy",
        "person",
        "people",
        "old",
        "young",
        "male",
        "female",
        "actor",
        "actress",
        "singer",
        "idol",
        "model",
        "realistic",
        "anime",
        "cosplay",
        "real",
        "face",
        "portrait",
        "mix",
        "the",
        "a",
        "an",
        "of",
        "and",
        "in",
        "from",
        "famous",
        "celeb",
        "star",
        "new",
        "art",
    ];
    DESCRIPTORS.contains(&word)
        || word.chars().all(|c| c.is_ascii_digit())
        // Decades and ages: "90s", "1980s", "20yo".
        || word
            .trim_end_matches('s')
            .trim_end_matches("yo")
            .chars()
            .all(|c| c.is_ascii_digit())
}

/// Words with which a prompt asks for some character or person without naming one.
const PERSON_WORDS: [&str; 6] = [
    "character",
    "characters",
    "celebrity",
    "celebrities",
    "cosplay",
    "cosplayer",
];

/// The name in an adapter title: bracketed parts dropped ("[LoCon]", "(v2)"), run-together
/// capitalized words split ("EdobHorse" -> "Edob Horse"), then the first part before `|`, `:`,
/// `,` or a spaced dash ("Name - by author"; a hyphen inside a word like "MX-5" or "Thigh-High"
/// does not cut) that has a name word left once words like "LoRA", "character" or version
/// numbers are removed.
pub fn title_name(title: &str) -> Vec<String> {
    let mut plain = String::with_capacity(title.len() + 8);
    let mut depth = 0usize;
    let chars: Vec<char> = title.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ if depth == 0 => {
                let starts_word = c.is_uppercase()
                    && i > 0
                    && chars[i - 1].is_lowercase()
                    && chars.get(i + 1).is_some_and(|n| n.is_lowercase());
                if starts_word {
                    plain.push(' ');
                }
                plain.push(c);
            }
            _ => {}
        }
    }
    let plain = plain
        .replace(" - ", "|")
        .replace(" \u{2013} ", "|")
        .replace(" \u{2014} ", "|");
    plain
        .split(['|', ':', ','])
        .map(|part| {
            lower_words(part)
                .into_iter()
                .filter(|w| !is_title_noise(w))
                .collect::<Vec<_>>()
        })
        .find(|name| !name.is_empty())
        .unwrap_or_default()
}

/// Words in adapter titles that are not part of a name.
fn is_title_noise(word: &str) -> bool {
    const NOISE: [&str; 17] = [
        "lora",
        "locon",
        "lycoris",
        "loha",
        "lokr",
        "dora",
        "character",
        "celebrity",
        "sd",
        "sd15",
        "sdxl",
        "xl",
        "style",
        "model",
        "outfit",
        "costume",
        "version",
    ];
    NOISE.contains(&word)
        || (word.starts_with('v')
            && word.len() > 1
            && word[1..].chars().all(|c| c.is_ascii_digit() || c == '.'))
        || word.chars().all(|c| c.is_ascii_digit())
}

/// Lower-cased words: runs of letters and digits.
pub fn lower_words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use stylus_core::{AdapterCard, AdapterId, Category};

    use super::*;

    fn person(title: &str, triggers: &[&str]) -> AdapterDoc {
        let mut card = AdapterCard::new(AdapterId::Civitai(1), title, "LORA");
        card.trigger_words = triggers.iter().map(|t| t.to_string()).collect();
        AdapterDoc {
            card,
            description: String::new(),
            recommended_weight: 0.8,
            category: Category::Celebrity,
            embedding_text: String::new(),
            refiner: "test".into(),
        }
    }

    #[test]
    fn generic_words_never_unlock_a_named_person() {
        let walter = person("Walter White", &["a man", "bald", "glasses"]);
        let keanu = person("90s Keanu Reeves", &["keanu reeves", "man"]);
        let noelle = person(
            "Noelle Silva (Black Clover)",
            &["noelle silva", "silver hair"],
        );
        let maid = person("Atomic Heart robot maid", &["robot", "robot_maid"]);
        let words = |p: &str| lower_words(p);
        assert!(!asks_for(&words("a white robot"), &maid));
        assert!(asks_for(&words("robot_maid serving tea"), &maid));
        for prompt in [
            "a man walking his dog in the park",
            "a bald man with glasses",
            "anime girl with silver hair in a forest",
            "a white cat",
            "a man from the 90s",
        ] {
            for doc in [&walter, &keanu, &noelle] {
                assert!(
                    !asks_for(&words(prompt), doc),
                    "{prompt:?} asked for {}",
                    doc.card.title
                );
            }
        }
        assert!(asks_for(&words("Walter White cooking"), &walter));
        assert!(asks_for(&words("keanu reeves as a wizard"), &keanu));
        assert!(asks_for(&words("noelle silva casting a spell"), &noelle));
        assert!(asks_for(&words("a man, celebrity portrait"), &walter));
        assert!(asks_for(&words("silver hair cosplay"), &noelle));
        // A made-up trigger token names its adapter; counts like "1girl" do not.
        let aria = person("Aria Vexley", &["avx2", "1girl", "long hair"]);
        assert!(asks_for(&words("avx2, smiling, outdoors"), &aria));
        assert!(!asks_for(&words("1girl, long hair, smiling"), &aria));
        assert_eq!(person_name("90s Keanu Reeves"), ["keanu", "reeves"]);
        assert!(person_name("Old Man").is_empty());
    }

    #[test]
    fn a_token_with_a_capital_inside_is_made_up_and_names_its_person() {
        let hibana = person("Hibana - Fire Force", &["HibanaFF", "military outfit"]);
        let words = |p: &str| lower_words(p);
        assert!(asks_for(
            &words("HibanaFF, military outfit, full body"),
            &hibana
        ));
        assert!(!asks_for(&words("a woman in a military outfit"), &hibana));
        for token in ["HibanaFF", "AmeriA", "SteamPunkAI", "hmn1"] {
            assert!(is_made_up_token(token), "{token}");
        }
        // Acronyms, plain and capitalised words, counts and phrases are not.
        for token in ["NASA", "Paris", "robot", "1girl", "4k", "Ab", "silver hair"] {
            assert!(!is_made_up_token(token), "{token}");
        }
    }

    #[test]
    fn title_names_skip_brackets_versions_and_lora_words() {
        assert_eq!(
            title_name("[LoCon] Aria Vexley | original"),
            ["aria", "vexley"]
        );
        assert_eq!(title_name("Aria Vexley (v2) - LoRA"), ["aria", "vexley"]);
        assert_eq!(title_name("LoRA | Captain Nemo v1.5"), ["captain", "nemo"]);
        assert!(title_name("[v3]").is_empty());
        assert_eq!(title_name("EdobHorse"), ["edob", "horse"]);
        assert_eq!(
            title_name("MAZDA MX-5 NA car LORA"),
            ["mazda", "mx", "na", "car"]
        );
        assert_eq!(
            title_name("Stripey Thigh-High Socks LoRA"),
            ["stripey", "thigh", "high", "socks"]
        );
    }
}
