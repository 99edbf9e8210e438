//! JSON that every consumer can parse: an event's `data` and `metadata` are
//! stored byte for byte and read by plugins and clients in any language, so
//! JSON that a common parser refuses would be a poison pill for every
//! projection that reads its category. Refused at intake, with a message
//! that names the rule:
//! - nesting deeper than `--max-json-depth` (a recursive parser overflows
//!   its stack);
//! - a number beyond what a double holds, such as `1e400` (serde_json, and
//!   so the Rust SDK, refuses it as out of range);
//! - a lone UTF-16 surrogate escape, such as `"\ud800"` (not a character:
//!   serde_json refuses it, and it cannot be turned into UTF-8).
//!
//! The input is already valid JSON. The common case costs one vectorised
//! bracket count and a few `memchr` scans; only JSON that might break a
//! rule is walked byte by byte.

/// Refuses `json` (valid JSON, the `field` of an event) if it breaks one of
/// the rules above; the error is the message that says which.
pub fn check(field: &str, json: &[u8], max_depth: usize) -> Result<(), String> {
    let depth = json_depth(json, max_depth);
    if depth > max_depth {
        return Err(format!(
            "`{field}` nests arrays and objects more than {max_depth} deep (the limit, --max-json-depth)"
        ));
    }
    if might_not_be_portable(json)
        && let Err(problem) = find_unportable(json)
    {
        return Err(format!("`{field}` {problem}"));
    }
    Ok(())
}

/// How deep arrays and objects nest in `json` (valid JSON), counted up to
/// `limit + 1`. Each level takes a bracket, so JSON with no more than
/// `limit` brackets is not scanned further: the common case costs one
/// vectorised count.
fn json_depth(json: &[u8], limit: usize) -> usize {
    let brackets = json.iter().filter(|&&b| b == b'[' || b == b'{').count();
    if brackets <= limit {
        return brackets;
    }
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut strings = StringTracker::default();
    for &byte in json {
        if strings.inside(byte) {
            continue;
        }
        match byte {
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > limit {
                    return deepest;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The shortest run of digits that can exceed a double (`f64::MAX` has 309
/// digits before the point).
const LONGEST_FINITE_DIGITS: usize = 308;

/// False when `json` surely holds no out-of-range number and no surrogate
/// escape: it has no `\u`, no `e` or `E` right after a digit (an exponent),
/// and no run of more than [`LONGEST_FINITE_DIGITS`] digits. True may be a
/// false alarm (`"1e5"` in a string); [`find_unportable`] then decides.
fn might_not_be_portable(json: &[u8]) -> bool {
    if memchr::memmem::find(json, br"\u").is_some() {
        return true;
    }
    if memchr::memchr2_iter(b'e', b'E', json).any(|at| at > 0 && json[at - 1].is_ascii_digit()) {
        return true;
    }
    // A run of 309 digits holds two consecutive sample points 154 apart.
    let stride = LONGEST_FINITE_DIGITS / 2;
    let sampled = |at: usize| json.get(at).is_some_and(u8::is_ascii_digit);
    (0..json.len())
        .step_by(stride)
        .any(|at| sampled(at) && sampled(at + stride))
}

/// Walks `json` (valid JSON): the first number no double can hold, or the
/// first lone surrogate escape, described for a person.
fn find_unportable(json: &[u8]) -> Result<(), String> {
    let mut at = 0;
    while at < json.len() {
        match json[at] {
            b'"' => at = check_string(json, at + 1)?,
            b'-' | b'0'..=b'9' => {
                let end = json[at..]
                    .iter()
                    .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                    .map_or(json.len(), |n| at + n);
                let text = std::str::from_utf8(&json[at..end]).unwrap_or("");
                if text.parse::<f64>().is_ok_and(|n| n.is_infinite()) {
                    return Err(format!(
                        "holds a number beyond what a double holds ({}): most JSON parsers refuse it or read infinity; send it as a string",
                        abbreviate(text)
                    ));
                }
                at = end;
            }
            _ => at += 1,
        }
    }
    Ok(())
}

/// Checks the string whose content starts at `at`; the index after its
/// closing quote.
fn check_string(json: &[u8], mut at: usize) -> Result<usize, String> {
    let lone = |escape: &[u8]| {
        Err(format!(
            "holds a lone UTF-16 surrogate escape (\\{}), which is not a character: most JSON parsers refuse it",
            String::from_utf8_lossy(escape)
        ))
    };
    // The high surrogate just read, waiting for its low half.
    let mut high: Option<&[u8]> = None;
    while at < json.len() {
        match json[at] {
            b'"' => break,
            b'\\' if json.get(at + 1) == Some(&b'u') => {
                let escape = json.get(at + 1..at + 6).unwrap_or(&json[at + 1..]);
                let unit = std::str::from_utf8(&escape[1..])
                    .ok()
                    .and_then(|hex| u16::from_str_radix(hex, 16).ok())
                    .unwrap_or(0);
                match (high.take(), unit) {
                    (None, 0xD800..=0xDBFF) => high = Some(escape),
                    (None, 0xDC00..=0xDFFF) => return lone(escape),
                    (Some(_), 0xDC00..=0xDFFF) => {}
                    (Some(first), _) => return lone(first),
                    (None, _) => {}
                }
                at += 6;
                continue;
            }
            b'\\' => at += 2,
            _ => at += 1,
        }
        if let Some(first) = high {
            return lone(first);
        }
    }
    match high {
        Some(first) => lone(first),
        None => Ok(at + 1),
    }
}

/// At most the first 24 characters of a (possibly huge) number.
fn abbreviate(text: &str) -> String {
    match text.get(..24) {
        Some(head) if text.len() > 24 => format!("{head}…, {} characters", text.len()),
        _ => text.to_owned(),
    }
}

/// Whether a byte of JSON is inside a string (quotes included), fed one
/// byte at a time.
#[derive(Default)]
struct StringTracker {
    in_string: bool,
    escaped: bool,
}

impl StringTracker {
    fn inside(&mut self, byte: u8) -> bool {
        if self.in_string {
            match byte {
                _ if self.escaped => self.escaped = false,
                b'\\' => self.escaped = true,
                b'"' => self.in_string = false,
                _ => {}
            }
            return true;
        }
        if byte == b'"' {
            self.in_string = true;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_counts_nesting_outside_strings() {
        for (json, limit, depth) in [
            ("1", 4, 0),
            ("[[1],[2]]", 1, 2),
            (r#"{"a":[{"b":1}]}"#, 2, 3),
            (r#"["[[[[","\\\"[[[["]"#, 1, 1),
            (r#"[[[[[]]]]]"#, 2, 3),
        ] {
            assert_eq!(json_depth(json.as_bytes(), limit), depth, "{json}");
        }
    }

    #[test]
    fn refuses_numbers_no_double_holds() {
        let huge = format!("[{}]", "9".repeat(400));
        for json in ["1e400", "[1,-2.5E+309]", r#"{"a":{"b":1e999}}"#, &huge] {
            assert!(might_not_be_portable(json.as_bytes()), "{json}");
            let problem = find_unportable(json.as_bytes()).unwrap_err();
            assert!(problem.contains("double"), "{problem}");
        }
        let message = find_unportable(huge.as_bytes()).unwrap_err();
        assert!(message.contains("402 characters") || message.contains("400 characters"));
    }

    #[test]
    fn refuses_lone_surrogates() {
        for json in [
            r#""\ud800""#,
            r#"["a\uDBFFb"]"#,
            r#"{"k":"\udc00"}"#,
            r#""\ud800\u0041""#,
            r#""\ud800\\udc00""#,
        ] {
            let problem = find_unportable(json.as_bytes()).unwrap_err();
            assert!(problem.contains("surrogate"), "{json}: {problem}");
            assert!(serde_json::from_str::<serde_json::Value>(json).is_err());
        }
    }

    #[test]
    fn accepts_what_parsers_read() {
        let digits = "1".repeat(308);
        for json in [
            "1e308",
            "-1.7976931348623157e308",
            "1e-400",
            "[1E5, 2e-3]",
            r#""1e400 in a string""#,
            r#""\ud83d\ude00 and \u00e9 and \\u and \"""#,
            r#"{"\ud83d\ude00":1e3}"#,
            &digits,
        ] {
            assert_eq!(find_unportable(json.as_bytes()), Ok(()), "{json}");
            assert!(serde_json::from_str::<serde_json::Value>(json).is_ok());
        }
    }

    #[test]
    fn the_filter_passes_plain_json_without_a_walk() {
        let plain = r#"{"order":"o-1","total":12.5,"items":[1,2,3],"note":"see"}"#;
        assert!(!might_not_be_portable(plain.as_bytes()));
        assert!(!might_not_be_portable("1".repeat(150).as_bytes()));
        assert!(might_not_be_portable("1".repeat(309).as_bytes()));
    }

    proptest::proptest! {
        /// Whatever JSON serde_json writes from its own values passes, and
        /// the filter never hides what the walk would refuse.
        #[test]
        fn the_filter_never_hides_a_problem(text in "[-0-9eE.+\"\\\\u dDcC8fF\\[\\],]{0,64}") {
            if serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok()
                && find_unportable(text.as_bytes()).is_err()
            {
                proptest::prop_assert!(might_not_be_portable(text.as_bytes()));
            }
        }
    }
}
