//! HTML model-card descriptions to clean text.
//!
//! Civitai descriptions are user-written HTML. We need their words, not their markup: tags are
//! removed, `<script>`/`<style>` contents dropped, block-level tags become line breaks, entities are
//! decoded and whitespace is collapsed (runs of spaces to one space, runs of blank lines to one
//! line break). The scanner is a small state machine rather than a DOM parser: it never fails, so
//! malformed markup (unclosed tags, stray `<`) still yields its text.

/// Tags whose start and end mark a line break in the rendered text.
const BLOCK_TAGS: &[&str] = &[
    "p",
    "br",
    "div",
    "li",
    "ul",
    "ol",
    "tr",
    "table",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "blockquote",
    "pre",
    "section",
    "article",
    "header",
    "footer",
    "dd",
    "dt",
];

/// Tags whose whole content is dropped (code and styling, never prose).
const DROPPED_TAGS: &[&str] = &["script", "style", "noscript", "template"];

/// Turns an HTML fragment into clean text: one line per block, single spaces within lines, no
/// leading or trailing whitespace.
pub fn html_to_text(html: &str) -> String {
    let mut raw = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        raw.push_str(&rest[..lt]);
        let after = &rest[lt + 1..];
        let Some(tag) = parse_tag(after) else {
            // A `<` that does not open a tag (`a < b`, `<3`): keep it as text.
            raw.push('<');
            rest = after;
            continue;
        };
        rest = &after[tag.len..];
        if tag.is_comment {
            continue;
        }
        if !tag.closing && DROPPED_TAGS.contains(&tag.name.as_str()) {
            rest = skip_past_closing_tag(rest, &tag.name);
            continue;
        }
        if BLOCK_TAGS.contains(&tag.name.as_str()) {
            raw.push('\n');
        } else {
            // Inline tags (`<strong>`, `<a>`) separate nothing in the text, but `a<b>x</b>` must
            // not glue words from adjacent cells either: a space is collapsed later if redundant.
            if matches!(tag.name.as_str(), "td" | "th" | "img") {
                raw.push(' ');
            }
        }
    }
    raw.push_str(rest);
    let decoded = html_escape::decode_html_entities(&raw);
    collapse_whitespace(&decoded)
}

/// A tag found after a `<`: its lower-case name, whether it closes, and how many bytes it spans
/// (up to and including the `>`).
struct Tag {
    name: String,
    closing: bool,
    is_comment: bool,
    len: usize,
}

/// Parses the tag that starts right after a `<`; `None` when the text there is not a tag.
fn parse_tag(after_lt: &str) -> Option<Tag> {
    if let Some(comment) = after_lt.strip_prefix("!--") {
        let len = comment
            .find("-->")
            .map_or(after_lt.len(), |end| 3 + end + 3);
        return Some(Tag {
            name: String::new(),
            closing: false,
            is_comment: true,
            len,
        });
    }
    let (closing, body) = match after_lt.strip_prefix('/') {
        Some(body) => (true, body),
        None => (false, after_lt),
    };
    let name: String = body
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let declaration = !closing && body.starts_with('!');
    let starts_with_letter = name.starts_with(|c: char| c.is_ascii_alphabetic());
    if !starts_with_letter && !declaration {
        return None;
    }
    // An unterminated tag swallows the rest of the input, as browsers do.
    let len = after_lt.find('>').map_or(after_lt.len(), |end| end + 1);
    Some(Tag {
        name: name.to_ascii_lowercase(),
        closing,
        is_comment: declaration,
        len,
    })
}

/// The text after `</name>` (case-insensitive); empty when the tag is never closed. Each `</`
/// is compared in place: lower-casing the rest of the input for every dropped element was
/// quadratic (minutes for 1 MB of `<script>x</script>`).
fn skip_past_closing_tag<'a>(text: &'a str, name: &str) -> &'a str {
    let mut from = 0;
    while let Some(found) = text[from..].find("</") {
        let name_start = from + found + 2;
        let candidate = text.as_bytes().get(name_start..name_start + name.len());
        if candidate.is_some_and(|c| c.eq_ignore_ascii_case(name.as_bytes())) {
            let tail = &text[name_start..];
            return tail.find('>').map_or("", |end| &tail[end + 1..]);
        }
        from = name_start;
    }
    ""
}

/// Collapses spaces within lines to one, trims lines and drops empty lines.
pub fn collapse_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut words = line.split_whitespace().peekable();
        if words.peek().is_none() {
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        let mut first = true;
        for word in words {
            if !first {
                out.push(' ');
            }
            out.push_str(word);
            first = false;
        }
    }
    out
}

/// The first `max_chars` characters of `text`, cut at a word boundary where possible, with an
/// ellipsis when something was cut.
pub fn truncate_chars(text: &str, max_chars: usize) -> String {
    let Some((cut, _)) = text.char_indices().nth(max_chars) else {
        return text.to_string();
    };
    let head = &text[..cut];
    let head = match head.rfind(char::is_whitespace) {
        Some(space) if space > cut / 2 => &head[..space],
        _ => head,
    };
    format!("{}…", head.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entities_decoded_blocks_become_lines() {
        let html = "<p>Works with anime &amp; realistic models</p><p>Use <strong>weight 0.6</strong>&nbsp;or&#32;less</p>";
        assert_eq!(
            html_to_text(html),
            "Works with anime & realistic models\nUse weight 0.6 or less"
        );
    }

    #[test]
    fn scripts_styles_and_comments_are_dropped() {
        let html = "before<script type=\"x\">alert('<p>hi</p>')</script> mid <STYLE>p{color:red}</STYLE><!-- secret --> after";
        assert_eq!(html_to_text(html), "before mid after");
    }

    #[test]
    fn dropped_elements_are_skipped_in_linear_time() {
        assert_eq!(html_to_text("a<script>x</SCRIPT >b"), "ab");
        assert_eq!(html_to_text("a<style>x</sty</style>b"), "ab");
        assert_eq!(html_to_text("a<script>x</scrip"), "a");
        assert_eq!(html_to_text("丸<script>é</script丸>ッ"), "丸ッ");
        // 55,000 dropped elements in 1 MB: minutes before (each lower-cased the rest), now instant.
        let html = "<script>x</script>".repeat(55_000) + "end";
        let start = std::time::Instant::now();
        assert_eq!(html_to_text(&html), "end");
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn malformed_markup_keeps_its_text() {
        assert_eq!(html_to_text("a < b and 3<4"), "a < b and 3<4");
        assert_eq!(html_to_text("text <b>bold"), "text bold");
        assert_eq!(html_to_text("x <script>never closed"), "x");
        assert_eq!(html_to_text("<p>unterminated <a href='"), "unterminated");
        assert_eq!(html_to_text(""), "");
    }

    #[test]
    fn lists_and_breaks_become_lines_and_whitespace_collapses() {
        let html = "<ul><li><p>1~3 :  big</p></li><li>3~7 : fine</li></ul>line<br/>next\n\n\n  spaced   out ";
        assert_eq!(
            html_to_text(html),
            "1~3 : big\n3~7 : fine\nline\nnext\nspaced out"
        );
    }

    #[test]
    fn entity_escaped_lora_tag_survives_as_text() {
        let html =
            "<p>&lt;lora:cuteGirlMix4_v10:<strong>(<u>recommend0.4-0.7 here)</u></strong>&gt;,</p>";
        assert_eq!(
            html_to_text(html),
            "<lora:cuteGirlMix4_v10:(recommend0.4-0.7 here)>,"
        );
    }

    #[test]
    fn truncation_cuts_at_words() {
        assert_eq!(truncate_chars("short", 10), "short");
        assert_eq!(truncate_chars("one two three four", 9), "one two…");
        assert_eq!(truncate_chars("墨心墨心墨心", 2), "墨心…");
    }
}
