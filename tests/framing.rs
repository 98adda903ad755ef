//! Line framing (SPEC 3): how bytes on the wire become lines, whatever the TCP segments look
//! like, and what an overlong line or a line cut off by the close costs.

use sock_chat_tests::{server_tests, Server};

server_tests! {
    [v1_threads, v2_select, v2_select_epoll, v3_broadcast, v3_broadcast_epoll, v4_async] => {
        crlf_and_lf_both_end_a_line,
        a_line_split_over_many_segments_arrives_whole,
        many_lines_in_one_segment_arrive_separately_in_order,
        empty_and_blank_lines_are_ignored,
        every_server_line_ends_with_crlf,
        a_line_of_exactly_max_line_bytes_passes,
        a_line_one_byte_over_gets_an_error_and_the_connection_stays,
        megabytes_without_newline_keep_server_memory_bounded,
        a_last_line_without_newline_is_delivered_at_close,
    }
}

/// The default `--max-line` (SPEC 3: the original's MAXSIZE_MSG).
const MAX_LINE_DEFAULT: usize = 1024;

fn crlf_and_lf_both_end_a_line(server: Server) {
    let running = server.start(&[]);
    let mut chat = running.conversation();
    chat.sender.send(b"telnet style\r\nnc style\n");
    chat.expect_heard("telnet style");
    chat.expect_heard("nc style");
}

fn a_line_split_over_many_segments_arrives_whole(server: Server) {
    let running = server.start(&[]);
    let mut chat = running.conversation();
    chat.sender
        .send_byte_by_byte(b"typed one key at a time\r\n");
    chat.expect_heard("typed one key at a time");
}

fn many_lines_in_one_segment_arrive_separately_in_order(server: Server) {
    const LINES: usize = 50;
    let running = server.start_unthrottled(&[]);
    let mut chat = running.conversation();
    let burst: String = (0..LINES).map(|i| format!("line {i}\n")).collect();
    chat.sender.send(burst.as_bytes());
    for i in 0..LINES {
        chat.expect_heard(&format!("line {i}"));
    }
}

fn empty_and_blank_lines_are_ignored(server: Server) {
    let running = server.start(&[]);
    let mut chat = running.conversation();
    chat.sender.send(b"\n\r\n   \n\t\r\n \t \n");
    chat.sender.send_line("the first real line");
    chat.expect_heard("the first real line");
}

fn every_server_line_ends_with_crlf(server: Server) {
    let running = server.start(&["--max-line", "8"]);
    let mut chat = running.conversation();
    chat.sender.send(b"lf only\n");
    let expected = format!("{}\r\n", chat.says("lf only"));
    assert_eq!(
        String::from_utf8_lossy(&chat.observer().read_raw_line()),
        expected
    );
    chat.sender.send(b"much too long\n");
    assert_eq!(
        String::from_utf8_lossy(&chat.sender.read_raw_line()),
        "* error: line too long (max 8 bytes)\r\n"
    );
}

fn a_line_of_exactly_max_line_bytes_passes(server: Server) {
    let running = server.start(&[]);
    let mut chat = running.conversation();
    let longest = "x".repeat(MAX_LINE_DEFAULT);
    chat.sender.send(format!("{longest}\n").as_bytes());
    chat.expect_heard(&longest);
    chat.sender.send(format!("{longest}\r\n").as_bytes());
    chat.expect_heard(&longest);
}

fn a_line_one_byte_over_gets_an_error_and_the_connection_stays(server: Server) {
    let running = server.start(&[]);
    let mut chat = running.conversation();
    let too_long = "y".repeat(MAX_LINE_DEFAULT + 1);
    for ending in ["\n", "\r\n"] {
        chat.sender.send(format!("{too_long}{ending}").as_bytes());
        chat.sender
            .expect_line("* error: line too long (max 1024 bytes)");
        // Lines are delivered in order, so hearing the next line proves the long one was not.
        chat.sender.send_line("after");
        chat.expect_heard("after");
    }
}

fn megabytes_without_newline_keep_server_memory_bounded(server: Server) {
    const STREAM: usize = 64 << 20;
    const CHUNK: usize = 64 << 10;
    /// Far more than one `--max-line` of 1 KiB, far less than the stream.
    const GROWTH_ALLOWED_KIB: u64 = 16 << 10;
    let running = server.start(&[]);
    let mut chat = running.conversation();
    let before_kib = running.rss_kib();
    let chunk = vec![b'z'; CHUNK];
    for _ in 0..STREAM / CHUNK {
        chat.sender.send(&chunk);
    }
    chat.sender.send(b"\n");
    chat.sender
        .expect_line("* error: line too long (max 1024 bytes)");
    chat.sender.send_line("still talking");
    chat.expect_heard("still talking");
    let peak_kib = running.peak_rss_kib();
    assert!(
        peak_kib < before_kib + GROWTH_ALLOWED_KIB,
        "resident memory went from {before_kib} KiB to a peak of {peak_kib} KiB"
    );
}

fn a_last_line_without_newline_is_delivered_at_close(server: Server) {
    let running = server.start(&[]);
    let mut chat = running.conversation();
    let last_words = chat.says("no newline");
    chat.sender.send(b"no newline");
    if server.is_room() {
        // `printf ... | nc`: the line, then the whole connection closes.
        let (sender, observer) = chat.into_clients();
        drop(sender);
        let mut observer = observer.unwrap();
        assert_eq!(observer.read_line(), last_words);
    } else {
        // The sender half-closes so it can still read the echo, which comes before the close.
        chat.sender.shutdown_write();
        assert_eq!(chat.sender.read_to_close(), [last_words]);
    }
}
