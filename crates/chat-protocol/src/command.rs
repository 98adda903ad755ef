//! v4's commands: what a line that starts with `/` asks for, and the rules for nicknames.
//!
//! Parsing is pure: [`parse`] turns a sanitised line into a [`Command`], and v4 carries it out
//! against its room. The texts a command answers with live in [`crate::message`].

/// Longest nickname, in characters.
pub const NICK_MAX: usize = 16;

/// What one line asks the server to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// Plain chat text (a leading `//` has become `/`).
    Chat(&'a str),
    /// `/nick NAME` (`Some`), or `/nick` alone to ask for one's name (`None`).
    Nick(Option<&'a str>),
    /// `/list`.
    List,
    /// `/pm NAME TEXT`.
    Pm { to: &'a str, text: &'a str },
    /// `/me TEXT`.
    Me(&'a str),
    /// `/quit [TEXT]`.
    Quit(Option<&'a str>),
    /// `/help`.
    Help,
    /// A command used wrongly: the usage line to answer with.
    Usage(&'static str),
    /// `/word` that is no command; holds `/word`.
    Unknown(&'a str),
}

/// `/pm` without a name or without text.
pub const PM_USAGE: &str = "/pm NAME TEXT";
/// `/me` without text.
pub const ME_USAGE: &str = "/me TEXT";
/// `/nick` with more than one word.
pub const NICK_USAGE: &str = "/nick [NAME]";

/// What a sanitised, non-empty line asks for. Command words ignore case (`/NICK` is `/nick`).
pub fn parse(line: &str) -> Command<'_> {
    if let Some(escaped) = line.strip_prefix("//") {
        return Command::Chat(&line[line.len() - escaped.len() - 1..]);
    }
    let Some(rest) = line.strip_prefix('/') else {
        return Command::Chat(line);
    };
    let (word, args) = match rest.split_once([' ', '\t']) {
        Some((word, args)) => (word, args.trim()),
        None => (rest, ""),
    };
    let args = (!args.is_empty()).then_some(args);
    match word.to_ascii_lowercase().as_str() {
        "nick" => match args {
            // Any whitespace, not only the ASCII that separates words: `args` was trimmed of
            // it all, and a name holding U+3000 is two words too.
            Some(name) if name.contains(char::is_whitespace) => Command::Usage(NICK_USAGE),
            name => Command::Nick(name),
        },
        "list" => Command::List,
        "pm" | "msg" => match args.and_then(|args| args.split_once([' ', '\t'])) {
            Some((to, text)) if !text.trim().is_empty() => Command::Pm {
                to,
                text: text.trim(),
            },
            _ => Command::Usage(PM_USAGE),
        },
        "me" => args.map_or(Command::Usage(ME_USAGE), Command::Me),
        "quit" => Command::Quit(args),
        "help" => Command::Help,
        _ => Command::Unknown(line.split([' ', '\t']).next().unwrap_or(line)),
    }
}

/// Why a nickname was refused (the room adds "taken", which only it can know).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadNick {
    Empty,
    TooLong,
    BadCharacter(char),
    /// One of [`RESERVED_NICKS`].
    Reserved,
}

/// The words that start the server's own notices (`* server shutting down`, `* error: ...`,
/// `* welcome ...`, `* online (3): ...`, `* you are ...`). Nobody may take them as a name, in
/// any case, or `/me shutting down` from "server" would read as the server's own notice.
pub const RESERVED_NICKS: &[&str] = &["server", "error", "welcome", "online", "you"];

/// The words a notice about a user puts right after the name (`* bob joined (3 online)`,
/// `* bob left (2 online)`, `* bob is now carol`). A `/me` whose text starts with them would
/// let anyone forge such a notice, so it is refused.
const NOTICE_VERBS: &[&[&str]] = &[&["joined"], &["left"], &["is", "now"]];

/// True if `/me TEXT` would read as a server notice about its sender: TEXT starts with the
/// word `joined` or `left`, or the words `is now`, in any case. `/me leftover pizza` is fine.
/// Invisible characters ([`is_invisible`]) are ignored, or `left` with a ZERO WIDTH SPACE
/// after it would pass while reading exactly as `left`.
pub fn me_reads_as_notice(text: &str) -> bool {
    let visible: String = text.chars().filter(|&c| !is_invisible(c)).collect();
    let words: Vec<&str> = visible
        .split(|c: char| c.is_whitespace() || c.is_ascii_punctuation())
        .filter(|word| !word.is_empty())
        .take(2)
        .collect();
    NOTICE_VERBS.iter().any(|verb| {
        verb.len() <= words.len()
            && verb
                .iter()
                .zip(&words)
                .all(|(want, word)| word.eq_ignore_ascii_case(want))
    })
}

/// Unicode's default-ignorable code points (`Default_Ignorable_Code_Point` in
/// DerivedCoreProperties.txt): characters a terminal shows as nothing at all, such as ZERO
/// WIDTH SPACE, WORD JOINER, the BOM and variation selectors. They are not removed from chat
/// (emoji sequences need some of them); they only do not separate or change words here.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{ad}' | '\u{34f}' | '\u{61c}' | '\u{115f}'..='\u{1160}' | '\u{17b4}'..='\u{17b5}'
        | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{3164}' | '\u{fe00}'..='\u{fe0f}' | '\u{feff}'
        | '\u{ffa0}' | '\u{fff0}'..='\u{fff8}' | '\u{1bca0}'..='\u{1bca3}'
        | '\u{1d173}'..='\u{1d17a}' | '\u{e0000}'..='\u{e0fff}')
}

/// A nickname is 1-[`NICK_MAX`] of `A-Za-z0-9_-`: no spaces, no `:`, `.`, `[` or `]`, so no
/// name can pass for a socket address like `127.0.0.1:5555`.
pub fn check_nick(name: &str) -> Result<(), BadNick> {
    if name.is_empty() {
        return Err(BadNick::Empty);
    }
    if let Some(bad) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        return Err(BadNick::BadCharacter(bad));
    }
    if name.len() > NICK_MAX {
        return Err(BadNick::TooLong);
    }
    if RESERVED_NICKS
        .iter()
        .any(|reserved| name.eq_ignore_ascii_case(reserved))
    {
        return Err(BadNick::Reserved);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_chat() {
        assert_eq!(parse("hello /nick"), Command::Chat("hello /nick"));
    }

    #[test]
    fn a_double_slash_sends_text_starting_with_a_slash() {
        assert_eq!(
            parse("//nick is a command"),
            Command::Chat("/nick is a command")
        );
        assert_eq!(parse("//"), Command::Chat("/"));
    }

    #[test]
    fn nick_with_and_without_a_name() {
        assert_eq!(parse("/nick alice"), Command::Nick(Some("alice")));
        assert_eq!(parse("/nick   alice  "), Command::Nick(Some("alice")));
        assert_eq!(parse("/nick"), Command::Nick(None));
        assert_eq!(parse("/nick "), Command::Nick(None));
        assert_eq!(parse("/nick two words"), Command::Usage(NICK_USAGE));
    }

    #[test]
    fn a_nick_with_unicode_whitespace_inside_is_two_words() {
        // Found by `cargo fuzz run command`: U+1680 OGHAM SPACE MARK survived into the name.
        assert_eq!(parse("/nick a\u{1680}b"), Command::Usage(NICK_USAGE));
        assert_eq!(parse("/nick two\u{3000}words"), Command::Usage(NICK_USAGE));
        assert_eq!(parse("/nick alice\u{2003}"), Command::Nick(Some("alice")));
    }

    #[test]
    fn command_words_ignore_case() {
        assert_eq!(parse("/NICK Bob"), Command::Nick(Some("Bob")));
        assert_eq!(parse("/List"), Command::List);
    }

    #[test]
    fn pm_needs_a_name_and_text() {
        assert_eq!(
            parse("/pm bob  hi there "),
            Command::Pm {
                to: "bob",
                text: "hi there"
            }
        );
        assert_eq!(parse("/pm bob"), Command::Usage(PM_USAGE));
        assert_eq!(parse("/pm"), Command::Usage(PM_USAGE));
    }

    #[test]
    fn me_quit_help_list() {
        assert_eq!(parse("/me waves"), Command::Me("waves"));
        assert_eq!(parse("/me"), Command::Usage(ME_USAGE));
        assert_eq!(parse("/quit"), Command::Quit(None));
        assert_eq!(parse("/quit see you"), Command::Quit(Some("see you")));
        assert_eq!(parse("/help"), Command::Help);
        assert_eq!(parse("/list"), Command::List);
    }

    #[test]
    fn anything_else_is_unknown_and_named() {
        assert_eq!(parse("/dance wildly"), Command::Unknown("/dance"));
        assert_eq!(parse("/"), Command::Unknown("/"));
    }

    #[test]
    fn notice_words_are_not_names() {
        for name in ["server", "Server", "ERROR", "welcome", "online", "You"] {
            assert_eq!(check_nick(name), Err(BadNick::Reserved), "{name}");
        }
        assert_eq!(check_nick("servers"), Ok(()));
        assert_eq!(check_nick("yours"), Ok(()));
    }

    #[test]
    fn a_me_that_reads_as_a_notice_about_a_user_is_spotted() {
        for text in [
            "joined (3 online)",
            "left (1 online)",
            "LEFT",
            "left: bye",
            "is now carol",
            "Is  Now carol",
            "left\u{200b} (1 online)",
            "\u{2060}joined (3 online)",
            "is\u{feff} now carol",
            "l\u{ad}eft (1 online)",
        ] {
            assert!(me_reads_as_notice(text), "{text:?}");
        }
        assert!(is_invisible('\u{200b}') && is_invisible('\u{e0041}'));
        assert!(!is_invisible(' ') && !is_invisible('a') && !is_invisible('\u{1f600}'));
        for text in [
            "waves",
            "leftover pizza",
            "is happy",
            "now is the time",
            "rejoined",
        ] {
            assert!(!me_reads_as_notice(text), "{text}");
        }
    }

    #[test]
    fn nick_rules() {
        assert_eq!(check_nick("alice"), Ok(()));
        assert_eq!(check_nick("A_b-9"), Ok(()));
        assert_eq!(check_nick("sixteen_chars_ok"), Ok(()));
        assert_eq!(check_nick(""), Err(BadNick::Empty));
        assert_eq!(check_nick("seventeen_chars_x"), Err(BadNick::TooLong));
        assert_eq!(
            check_nick("127.0.0.1:5555"),
            Err(BadNick::BadCharacter('.'))
        );
        assert_eq!(check_nick("[::1]:1"), Err(BadNick::BadCharacter('[')));
        assert_eq!(check_nick("al ice"), Err(BadNick::BadCharacter(' ')));
        assert_eq!(
            check_nick("\u{e9}mile"),
            Err(BadNick::BadCharacter('\u{e9}'))
        );
    }
}
