//! What a line may contain before anyone sees it (SPEC 3): one user can never put bytes on
//! another user's terminal that the terminal would obey, nor invalid UTF-8.

use sock_chat_tests::{server_tests, Conversation, Server};

server_tests! {
    [v1_threads, v2_select, v2_select_epoll, v3_broadcast, v3_broadcast_epoll, v4_async] => {
        invalid_utf8_arrives_as_replacement_characters,
        telnet_commands_are_dropped,
        control_characters_and_escapes_are_removed_but_tabs_stay,
        trailing_whitespace_is_trimmed_and_leading_kept,
        a_line_of_only_control_characters_is_ignored,
        bidirectional_controls_are_removed,
        the_server_log_gets_the_cleaned_line,
    }
}

/// Sends each raw line and checks the observer hears the cleaned text, in order, with no
/// control character but TAB.
fn expect_cleaned(chat: &mut Conversation, cases: &[(&[u8], &str)]) {
    for (raw, _) in cases {
        chat.sender.send(raw);
    }
    for (raw, cleaned) in cases {
        let heard = chat.heard();
        assert_no_control_characters(&heard);
        assert_eq!(
            heard,
            chat.says(cleaned),
            "sent {:?}",
            raw.escape_ascii().to_string()
        );
    }
}

fn assert_no_control_characters(line: &str) {
    assert!(
        !line.chars().any(|c| c.is_control() && c != '\t'),
        "control character in {line:?}"
    );
}

fn invalid_utf8_arrives_as_replacement_characters(server: Server) {
    let running = server.start(&[]);
    let mut chat = running.conversation();
    expect_cleaned(
        &mut chat,
        &[
            (b"bad \xc3\x28 byte\n", "bad \u{fffd}( byte"),
            (b"cut off \xe2\x82\n", "cut off \u{fffd}"),
            (b"\x80\x80\n", "\u{fffd}\u{fffd}"),
            (
                "still fine: h\u{e9}llo \u{1f44b}\n".as_bytes(),
                "still fine: h\u{e9}llo \u{1f44b}",
            ),
        ],
    );
}

/// U+202E (RIGHT-TO-LEFT OVERRIDE) would display the rest of a line, and in some terminals
/// the lines after it, backwards ("Trojan Source"); every embedding, override and isolate goes.
fn bidirectional_controls_are_removed(server: Server) {
    let running = server.start(&[]);
    let mut chat = running.conversation();
    expect_cleaned(
        &mut chat,
        &[
            ("pay \u{202e}001$ to bob\n".as_bytes(), "pay 001$ to bob"),
            (
                "a\u{202a}b\u{202b}c\u{202c}d\u{202d}e\u{2066}f\u{2067}g\u{2068}h\u{2069}i\n"
                    .as_bytes(),
                "abcdefghi",
            ),
        ],
    );
}

fn telnet_commands_are_dropped(server: Server) {
    let running = server.start(&[]);
    let mut chat = running.conversation();
    expect_cleaned(
        &mut chat,
        &[
            // What telnet sends on connect: IAC DO SUPPRESS-GO-AHEAD, IAC WILL TERMINAL-TYPE.
            (b"\xff\xfd\x03\xff\xfb\x18hi\r\n", "hi"),
            // A subnegotiation with its parameters: window size 80x24.
            (b"a\xff\xfa\x1f\x00\x50\x00\x18\xff\xf0b\r\n", "ab"),
            // Interrupt process, then an escaped 0xFF.
            (b"x\xff\xf4y\xff\xffz\r\n", "xyz"),
        ],
    );
}

fn control_characters_and_escapes_are_removed_but_tabs_stay(server: Server) {
    let running = server.start(&[]);
    let mut chat = running.conversation();
    expect_cleaned(
        &mut chat,
        &[
            // ESC gone, what is left of the sequence is harmless text.
            (b"\x1b[2J\x1b[Hcleared\x1b[31m\n", "[2J[Hcleared[31m"),
            (b"ring\x07 the bell\n", "ring the bell"),
            (b"back\x08\x08space\x7f\n", "backspace"),
            // C1: CSI (U+009B) encoded as UTF-8, and NEL.
            ("c1\u{9b}31m \u{85}next\n".as_bytes(), "c131m next"),
            (b"nul\0 vt\x0b ff\x0c cr\rmid\n", "nul vt ff crmid"),
            (b"tab\tkept\n", "tab\tkept"),
        ],
    );
}

fn trailing_whitespace_is_trimmed_and_leading_kept(server: Server) {
    let running = server.start(&[]);
    let mut chat = running.conversation();
    expect_cleaned(
        &mut chat,
        &[
            (b"hi \t  \r\n", "hi"),
            (b"  indented\n", "  indented"),
            (b"escape at the end \x1b\n", "escape at the end"),
        ],
    );
}

fn a_line_of_only_control_characters_is_ignored(server: Server) {
    let running = server.start(&[]);
    let mut chat = running.conversation();
    chat.sender.send(b"\x1b\x07\x08\x7f\n");
    chat.sender.send(b"\xff\xfd\x03\xff\xfb\x18\r\n");
    chat.sender.send("\u{9b}\u{85} \t\n".as_bytes());
    chat.sender.send_line("the first real line");
    chat.expect_heard("the first real line");
}

fn the_server_log_gets_the_cleaned_line(server: Server) {
    let running = server.start(&[]);
    let mut chat = running.conversation();
    chat.sender.send(b"\x1b[2Jlog me\x07\n");
    chat.expect_heard("[2Jlog me");
    let logged = running.expect_log(&chat.says("[2Jlog me"));
    assert_no_control_characters(&logged);
}
