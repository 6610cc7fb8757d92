//! A triggered run's arguments as WebJobs has them: one string (Kudu's
//! `?arguments=`), appended to the command line as given. Words are separated
//! by white space and only double quotes group them; apostrophes and
//! backslashes are ordinary characters, so `O'Brien` and `C:\temp\x` arrive
//! intact. The string itself reaches the job in `WEBJOBS_COMMAND_ARGUMENTS`,
//! exactly as the caller wrote it.

/// The words of an arguments string: white space separates them outside
/// double quotes; quotes group and are removed (`""` is an empty word); an
/// unclosed quote runs to the end of the string.
pub fn split(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let (mut in_word, mut quoted) = (false, false);
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The arguments string for exact words (`webjobs run JOB -- a "b c"`):
/// a word with white space, or an empty one, is put in double quotes, so that
/// [`split`] gives the words back (a word holding a double quote cannot be
/// written this way; it still reaches the script's argv unchanged).
pub fn join(words: &[String]) -> String {
    let quote = |w: &String| {
        if w.is_empty() || w.chars().any(char::is_whitespace) { format!("\"{w}\"") } else { w.clone() }
    };
    words.iter().map(quote).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        split(text)
    }

    #[test]
    fn only_double_quotes_group_words() {
        assert_eq!(words(r#"O'Brien C:\temp\x"#), ["O'Brien", r"C:\temp\x"]);
        assert_eq!(words(r#""Ada Lovelace" Grace"#), ["Ada Lovelace", "Grace"]);
        assert_eq!(words(r#"--name="Ada L" 'a b'"#), ["--name=Ada L", "'a", "b'"]);
        assert_eq!(words("  a\t b\n"), ["a", "b"]);
        assert_eq!(words(r#"a "" b"#), ["a", "", "b"]);
        assert_eq!(words(r#"back\slash\ "x"#), [r"back\slash\", "x"]);
        assert_eq!(words(""), Vec::<String>::new());
    }

    #[test]
    fn an_unclosed_quote_runs_to_the_end() {
        assert_eq!(words(r#"a "b c"#), ["a", "b c"]);
    }

    #[test]
    fn joined_words_split_back() {
        let cases: Vec<Vec<String>> = vec![
            vec!["Ada Lovelace".into(), "Grace".into()],
            vec!["O'Brien".into(), r"C:\temp\x".into(), "".into()],
            vec!["ünï cödé".into(), "tab\there".into()],
        ];
        for argv in cases {
            assert_eq!(split(&join(&argv)), argv, "{argv:?}");
        }
        assert_eq!(join(&["a b".into(), "c".into()]), r#""a b" c"#);
    }
}
