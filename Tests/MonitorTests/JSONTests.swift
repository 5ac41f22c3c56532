import XCTest
@testable import Monitor

final class JSONTests: XCTestCase {
    func testParsesEveryKindOfValue() throws {
        let v = try JSONParser.parse(#" {"a": [1, -2, 3.5, 1e3, true, false, null], "b": {"c": "d"}, "e": 9223372036854775807} "#)
        XCTAssertEqual(v["a"], [1, -2, .double(3.5), .double(1000), true, false, nil])
        XCTAssertEqual(v["b"]?["c"], "d")
        XCTAssertEqual(v["e"], .int(Int64.max))
        XCTAssertEqual(try JSONParser.parse("18446744073709551616"), .double(18446744073709551616.0))
        XCTAssertEqual(try JSONParser.parse("'single'"), "single", "QEMU's single-quoted strings")
    }

    func testStringEscapesAndUnicode() throws {
        XCTAssertEqual(try JSONParser.parse(#""a\"b\\c\/d\b\f\n\r\t""#), .string("a\"b\\c/d\u{8}\u{c}\n\r\t"))
        XCTAssertEqual(try JSONParser.parse(#""\u00e9\ud83d\ude00""#), .string("é😀"))
        XCTAssertEqual(try JSONParser.parse("\"é\""), .string("é"))
    }

    func testRejectsMalformedInput() {
        let bad = ["", "garbage", "{", "[1,]", "{\"a\":1,}", "{\"a\" 1}", "{1:2}", "01", "1.", "-", "1e", "tru",
                   "\"abc", "\"\\x\"", "\"\\u12\"", "\"\\ud800\"", "\"\\udc00\"", "\"a\u{1}b\"", "[1 2]", "{} {}",
                   "nullx", "{\"a\":1,\"a\":2}", "]", ":"]
        for text in bad {
            XCTAssertThrowsError(try JSONParser.parse(text), "accepted \(text.debugDescription)")
        }
        XCTAssertThrowsError(try JSONParser.parse([0x22, 0xff, 0xfe, 0x22]), "invalid UTF-8 in a string")
        XCTAssertThrowsError(try JSONParser.parse([0xc3, 0x28]))
    }

    func testErrorWordingFollowsQEMU() {
        XCTAssertEqual(error(of: "garbage"), "JSON parse error, invalid keyword 'garbage'")
        XCTAssertEqual(error(of: "]"), "JSON parse error, expecting value")
    }

    private func error(of text: String) -> String? {
        do { _ = try JSONParser.parse(text); return nil } catch { return "\(error)" }
    }

    func testNestingIsBounded() throws {
        let ok = String(repeating: "[", count: 1024) + String(repeating: "]", count: 1024)
        XCTAssertNoThrow(try JSONParser.parse(ok))
        let deep = String(repeating: "[", count: 1025) + String(repeating: "]", count: 1025)
        XCTAssertEqual(error(of: deep), "JSON nesting depth limit exceeded")
        // Far deeper than any stack could recurse: still an error, not a crash.
        let absurd = String(repeating: "{\"a\":", count: 200_000)
        XCTAssertThrowsError(try JSONParser.parse(absurd))
    }

    func testHugeStringParses() throws {
        let big = String(repeating: "x", count: 4 << 20)
        XCTAssertEqual(try JSONParser.parse("\"\(big)\"").stringValue?.count, 4 << 20)
    }

    func testEveryTruncationOfAValidMessageFailsCleanly() {
        let text = Array(#"{"execute": "human-monitor-command", "arguments": {"command-line": "info \u00e9"}, "id": [1, 2.5e-3, null]}"#.utf8)
        XCTAssertNoThrow(try JSONParser.parse(text))
        for n in 0..<text.count {
            XCTAssertThrowsError(try JSONParser.parse(Array(text[0..<n])), "prefix of \(n) bytes parsed")
        }
    }

    func testRandomBytesNeverCrash() {
        var rng = SystemRandomNumberGenerator()
        let alphabet = Array("{}[]\",:'\\u0123456789abcdefetrunl.-+ \n\u{7f}".utf8) + [0x00, 0xc3, 0xff, 0xed, 0xa0]
        for _ in 0..<3000 {
            let n = Int.random(in: 0..<64, using: &rng)
            let bytes = (0..<n).map { _ in alphabet.randomElement(using: &rng)! }
            _ = try? JSONParser.parse(bytes)
            var s = JSONStreamer(maxMessageSize: 32, maxDepth: 4)
            s.feed(bytes) { _ in }
        }
    }

    func testSerializerRoundTripsAndEscapes() throws {
        let v: JSON = ["s": .string("q\"b\\n\n\u{1}é😀"), "n": -5, "d": .double(0.5), "a": [true, nil, [:]], "o": ["x": []]]
        let text = v.serialized()
        XCTAssertEqual(text, #"{"s": "q\"b\\n\n\u0001é😀", "n": -5, "d": 0.5, "a": [true, null, {}], "o": {"x": []}}"#)
        XCTAssertEqual(try JSONParser.parse(text), v)
        XCTAssertEqual(try JSONParser.parse(v.serialized(pretty: true)), v)
        XCTAssertEqual(JSON.double(.infinity).serialized(), "null", "output must stay valid JSON")
    }
}

final class JSONStreamerTests: XCTestCase {
    private func pieces(_ chunks: [String], _ s: inout JSONStreamer) -> [JSONStreamer.Piece] {
        var out: [JSONStreamer.Piece] = []
        for c in chunks { s.feed(Array(c.utf8)) { out.append($0) } }
        return out
    }

    private func messages(_ p: [JSONStreamer.Piece]) -> [String] {
        p.map {
            switch $0 {
            case .message(let m): return String(decoding: m, as: UTF8.self)
            case .error(let e): return "error: \(e)"
            }
        }
    }

    func testSplitsMessagesWithoutNewlines() {
        var s = JSONStreamer()
        XCTAssertEqual(messages(pieces([#"{"a": "}{"}{"b": [1, {"c": 2}]}  "x" 12 "#], &s)),
                       [#"{"a": "}{"}"#, #"{"b": [1, {"c": 2}]}"#, #""x""#, "12"])
    }

    func testReassemblesAMessageFedByteByByte() {
        var s = JSONStreamer()
        let text = #"{"execute": "query-status", "id": "a\"}"}"#
        let out = pieces(text.map { String($0) }, &s)
        XCTAssertEqual(messages(out), [text])
        XCTAssertFalse(s.isMidMessage)
    }

    func testTooDeepMessageIsOneErrorThenRecovers() {
        var s = JSONStreamer(maxMessageSize: 1 << 20, maxDepth: 8)
        let out = pieces([String(repeating: "[", count: 100) + String(repeating: "]", count: 100), #"{"ok": 1}"#], &s)
        XCTAssertEqual(messages(out), ["error: JSON nesting depth limit exceeded", #"{"ok": 1}"#])
    }

    func testOversizedMessageIsBoundedThenRecovers() {
        var s = JSONStreamer(maxMessageSize: 1024, maxDepth: 8)
        let huge = "{\"a\": \"" + String(repeating: "x", count: 100_000) + "\"}"
        let out = pieces([huge, "[1]"], &s)
        XCTAssertEqual(messages(out), ["error: JSON token size limit exceeded", "[1]"])
    }

    func testUnterminatedInputStaysPending() {
        var s = JSONStreamer()
        XCTAssertEqual(pieces([#"{"execute": "stop""#], &s), [])
        XCTAssertTrue(s.isMidMessage)
    }
}
