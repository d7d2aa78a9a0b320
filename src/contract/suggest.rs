//! "Did you mean …?": the closest valid word to a misspelt one, for every diagnostic that names
//! an unknown key, source, label or metric.

/// The candidate closest to `word` by edit distance (transpositions count once), when it is
/// close enough to be a likely typo and no other candidate is as close.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    // A typo of a short word is at most one edit; of a longer one, about one edit per 3 letters.
    let limit = (word.chars().count() / 3).max(1);
    let mut best: Option<(usize, &str)> = None;
    let mut tie = false;
    for candidate in candidates {
        if candidate == word {
            continue;
        }
        let distance = if candidate.eq_ignore_ascii_case(word) { 0 } else { strsim::osa_distance(&lower, &candidate.to_ascii_lowercase()) };
        match best {
            Some((d, _)) if distance > d => {}
            Some((d, b)) if distance == d => tie |= b != candidate,
            _ => {
                best = Some((distance, candidate));
                tie = false;
            }
        }
    }
    best.filter(|&(d, _)| d <= limit && !tie).map(|(_, c)| c)
}

/// `; did you mean `x`?` or nothing, to append to a message.
pub fn hint<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(word, candidates).map(|c| format!("; did you mean `{c}`?")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_their_word() {
        let keys = ["format", "name", "version", "metrics", "labels", "methods", "routes"];
        assert_eq!(closest("metric", keys), Some("metrics"));
        assert_eq!(closest("lables", keys), Some("labels"));
        assert_eq!(closest("Routes", keys), Some("routes"));
        assert_eq!(closest("verison", keys), Some("version"));
    }

    #[test]
    fn nothing_close_or_two_equally_close_gives_nothing() {
        assert_eq!(closest("workload", ["format", "name"]), None);
        assert_eq!(closest("ab", ["ax", "ay"]), None);
        assert_eq!(closest("name", ["name"]), None);
    }
}
