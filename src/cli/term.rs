//! What the CLI shows people: colour (only on a terminal, never with
//! `NO_COLOR`), times relative to now, and lines cut to the terminal's width.
//! Scripts get the same data with `--json`, unchanged by any of this.

use std::io::IsTerminal;

/// `--color`: when to colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless `NO_COLOR` is set.
    #[default]
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    /// Whether to colour standard output.
    pub fn for_stdout(self) -> bool {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        self.decide(std::io::stdout().is_terminal(), no_color)
    }

    fn decide(self, terminal: bool, no_color: bool) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => terminal && !no_color,
        }
    }
}

/// An SGR colour, or nothing when colour is off.
#[derive(Debug, Clone, Copy)]
pub struct Paint(pub bool);

pub const RED: &str = "31";
pub const GREEN: &str = "32";
pub const YELLOW: &str = "33";
pub const BLUE: &str = "34";
pub const MAGENTA: &str = "35";
pub const CYAN: &str = "36";
pub const DIM: &str = "2";
pub const BOLD: &str = "1";

impl Paint {
    pub fn paint(self, sgr: &str, text: &str) -> String {
        if self.0 && !text.is_empty() { format!("\x1b[{sgr}m{text}\x1b[0m") } else { text.to_string() }
    }

    /// A job or run status in the colour of what it means.
    pub fn status(self, status: &str) -> String {
        self.paint(status_colour(status), status)
    }
}

/// Green: doing what it should; yellow: on its way or waiting; red: needs a look.
pub fn status_colour(status: &str) -> &'static str {
    match status {
        "Running" | "Success" | "Ready" => GREEN,
        "Initializing" | "Starting" | "Stopping" | "PendingRestart" | "Queued" => YELLOW,
        "Failed" | "Aborted" | "Invalid" => RED,
        _ => DIM,
    }
}

/// A stable colour per job name (`logs --all`), as `docker compose logs` does.
pub fn name_colour(name: &str) -> &'static str {
    const COLOURS: [&str; 5] = [CYAN, YELLOW, GREEN, MAGENTA, BLUE];
    COLOURS[(crate::hash::fnv1a(name.as_bytes()) % COLOURS.len() as u64) as usize]
}

/// `5m ago`, `in 3m`, `just now`: `then` against `now`, both in ms since the epoch.
pub fn relative(now_ms: i64, then_ms: i64) -> String {
    let delta = then_ms - now_ms;
    let span = short_span(delta.unsigned_abs() / 1000);
    match delta {
        d if d.abs() < 1000 => "now".to_string(),
        d if d > 0 => format!("in {span}"),
        _ => format!("{span} ago"),
    }
}

/// A span of seconds in its two largest units: `42s`, `3m05s`, `2h07m`, `3d04h`.
pub fn short_span(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

/// An RFC 3339 time as ms since the epoch.
pub fn millis(text: &str) -> Option<i64> {
    text.parse::<jiff::Timestamp>().ok().map(|t| t.as_millisecond())
}

/// How a time is shown: relative to now, or (`--utc`) absolute in UTC to the second.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub now_ms: i64,
    pub utc: bool,
}

impl Clock {
    pub fn now(utc: bool) -> Clock {
        Clock { now_ms: jiff::Timestamp::now().as_millisecond(), utc }
    }

    pub fn show(self, text: &str) -> String {
        match millis(text) {
            Some(ms) if self.utc => jiff::Timestamp::from_millisecond(ms / 1000 * 1000)
                .map(|t| t.to_string())
                .unwrap_or_else(|_| text.to_string()),
            Some(ms) => relative(self.now_ms, ms),
            None => text.to_string(),
        }
    }

    /// How long since `text` (an uptime), or nothing.
    pub fn since(self, text: &str) -> String {
        millis(text).map(|ms| short_span(((self.now_ms - ms).max(0) / 1000) as u64)).unwrap_or_default()
    }
}

/// The terminal's width when standard output is one.
pub fn width() -> Option<usize> {
    size().map(|(cols, _)| cols)
}

/// The terminal's columns and rows when standard output is one.
pub fn size() -> Option<(usize, usize)> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    // SAFETY: TIOCGWINSZ fills a winsize struct we own.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    (ok && size.ws_col > 0 && size.ws_row > 0).then_some((size.ws_col as usize, size.ws_row as usize))
}

/// `text` (which may hold colour codes) cut to `max` visible characters,
/// ending in `…` when cut, colour reset.
pub fn cut_visible(text: &str, max: usize) -> String {
    if visible_len(text) <= max {
        return text.to_string();
    }
    let mut out = String::new();
    let (mut shown, mut in_escape, mut coloured) = (0, false, false);
    for c in text.chars() {
        match (in_escape, c) {
            (false, '\x1b') => {
                in_escape = true;
                coloured = true;
                out.push(c);
            }
            (true, c) => {
                in_escape = c != 'm';
                out.push(c);
            }
            (false, c) if shown + 1 < max => {
                shown += 1;
                out.push(c);
            }
            (false, _) => break,
        }
    }
    out.push('…');
    if coloured {
        out.push_str("\x1b[0m");
    }
    out
}

/// Pads `text` (which may hold colour codes) to `width` visible characters.
pub fn pad(text: &str, width: usize) -> String {
    let visible = visible_len(text);
    format!("{text}{}", " ".repeat(width.saturating_sub(visible)))
}

/// Characters shown, colour codes not counted.
pub fn visible_len(text: &str) -> usize {
    let mut n = 0;
    let mut in_escape = false;
    for c in text.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => n += 1,
        }
    }
    n
}

/// A table: columns as wide as their widest cell, two spaces apart; the
/// last column cut to what is left of `width` (when on a terminal).
pub fn table(header: &[&str], rows: &[Vec<String>], width: Option<usize>, paint: Paint) -> String {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns - 1) {
            widths[i] = widths[i].max(visible_len(cell));
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            if i + 1 < columns {
                out.push_str(&pad(&cell, widths[i]));
                out.push_str("  ");
            } else {
                out.push_str(&cell);
            }
        }
        let out = out.trim_end();
        width.map_or(out.to_string(), |max| cut_visible(out, max))
    };
    let mut out = line(header.iter().map(|h| paint.paint(BOLD, h)).collect());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.clone()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color() {
        assert!(ColorChoice::Auto.decide(true, false));
        assert!(!ColorChoice::Auto.decide(false, false), "piped");
        assert!(!ColorChoice::Auto.decide(true, true), "NO_COLOR");
        assert!(ColorChoice::Always.decide(false, true));
        assert!(!ColorChoice::Never.decide(true, false));
    }

    #[test]
    fn times_read_relative_to_now() {
        let now = 1_800_000_000_000;
        assert_eq!(relative(now, now + 180_000), "in 3m00s");
        assert_eq!(relative(now, now - 300_500), "5m00s ago");
        assert_eq!(relative(now, now - 7_500_000), "2h05m ago");
        assert_eq!(relative(now, now + 200), "now");
        assert_eq!(relative(now, now - 3 * 86_400_000 - 3_600_000), "3d01h ago");
        let clock = Clock { now_ms: now, utc: true };
        assert_eq!(clock.show("2027-01-15T08:00:00.250Z"), "2027-01-15T08:00:00Z");
        assert_eq!(Clock { now_ms: now, utc: false }.since("2027-01-15T07:59:00Z"), "1m00s");
    }

    #[test]
    fn a_table_cuts_its_last_column_to_the_width_and_pads_past_colour() {
        let paint = Paint(true);
        let rows = vec![vec![paint.status("Running"), "x".repeat(100)]];
        let out = table(&["STATUS", "DETAIL"], &rows, Some(40), Paint(false));
        let narrow = table(&["STATUS", "DETAIL"], &rows, Some(5), Paint(false));
        assert_eq!(narrow.lines().nth(1).unwrap(), "\x1b[32mRunn…\x1b[0m", "cut inside a coloured cell");
        let line = out.lines().nth(1).unwrap();
        assert_eq!(visible_len(line), 40, "{line}");
        assert!(line.ends_with("…\x1b[0m"), "{line:?}");
        assert!(line.starts_with("\x1b[32mRunning\x1b[0m  x"), "padded by visible width: {line:?}");
        assert_eq!(
            table(&["A", "B"], &[vec!["a".into(), "y".repeat(100)]], None, paint).lines().nth(1).unwrap().len(),
            103
        );
    }
}
