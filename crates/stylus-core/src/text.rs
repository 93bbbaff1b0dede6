//! Text from users and catalogs made safe: prompts without terminal escapes or line breaks, and
//! any text escaped for printing to a terminal.

/// A prompt as the pipeline should see it: ANSI/terminal escape sequences (`ESC [ ... m`,
/// `ESC ] ... BEL`) removed, every other control character (newline, tab, NUL, DEL, C1) turned
/// into a space, runs of spaces collapsed, ends trimmed. So `"\x1b[31mRED\x1b[0m cat\nsitting"`
/// becomes `"RED cat sitting"`: escapes never become topics and a prompt stays one line (A1111's
/// PNG `parameters` text is line-oriented).
pub fn clean_prompt(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' || c == '\u{9b}' {
            skip_escape(c, &mut chars);
            push_space(&mut out);
        } else if c.is_control() {
            push_space(&mut out);
        } else {
            out.push(c);
        }
    }
    let mut collapsed = String::with_capacity(out.len());
    for word in out.split(' ').filter(|w| !w.is_empty()) {
        if !collapsed.is_empty() {
            collapsed.push(' ');
        }
        collapsed.push_str(word);
    }
    collapsed
}

fn push_space(out: &mut String) {
    if !out.ends_with(' ') {
        out.push(' ');
    }
}

/// Skips the rest of an escape sequence that began with `first` (ESC or the C1 CSI).
fn skip_escape(first: char, chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    let kind = if first == '\u{9b}' {
        '['
    } else {
        match chars.peek() {
            Some(&c) => {
                chars.next();
                c
            }
            None => return,
        }
    };
    match kind {
        // CSI: parameters and intermediates, then one final byte in @..~.
        '[' => {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
        // OSC, DCS, SOS, PM, APC: up to BEL or ST (ESC \).
        ']' | 'P' | 'X' | '^' | '_' => {
            while let Some(c) = chars.next() {
                if c == '\u{7}' || c == '\u{9c}' {
                    break;
                }
                if c == '\u{1b}' {
                    if chars.peek() == Some(&'\\') {
                        chars.next();
                    }
                    break;
                }
            }
        }
        // Two-character sequences (ESC c, ESC 7, ...): the character is already consumed.
        _ => {}
    }
}

/// `text` safe to print on a terminal: control characters (ESC, newline, tab, C1, DEL, ...)
/// written as Rust escapes (`\u{1b}`, `\n`, `\t`), everything else unchanged. For human output;
/// JSON output keeps the exact text (JSON escapes control characters itself).
pub fn escape_control(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_lose_escapes_and_line_breaks() {
        assert_eq!(
            clean_prompt("\u{1b}[31mRED\u{1b}[0m cat\nsitting\ton a\r\nmat"),
            "RED cat sitting on a mat"
        );
        assert_eq!(clean_prompt("\u{1b}]0;title\u{7}a dog"), "a dog");
        assert_eq!(clean_prompt("\u{1b}]8;;http://x\u{1b}\\link"), "link");
        assert_eq!(clean_prompt("a\u{0}b\u{7f}c\u{9b}1;2Hd"), "a b c d");
        assert_eq!(
            clean_prompt("  (golden hour:1.2), 東京  "),
            "(golden hour:1.2), 東京"
        );
        assert_eq!(clean_prompt("\u{1b}"), "");
    }

    #[test]
    fn escaping_shows_control_characters() {
        assert_eq!(escape_control("plain ü"), "plain ü");
        assert_eq!(escape_control("a\u{1b}[31mb\nc"), "a\\u{1b}[31mb\\nc");
        assert!(
            !escape_control("\u{9b}x\u{7f}")
                .chars()
                .any(char::is_control)
        );
    }
}
