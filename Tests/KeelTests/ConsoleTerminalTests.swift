import Foundation
import XCTest

/// -nographic on a real terminal: the console is raw, Ctrl-A h lists the keys, Ctrl-A x quits with
/// status 0, and the terminal is restored. A Python pty drives keel as a person at a terminal would.
final class ConsoleTerminalTests: XCTestCase {
    static let driver = """
    import os, pty, select, sys, termios, time
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(sys.argv[1], sys.argv[1:])
    buf = b''
    def wait_for(s, timeout):
        global buf
        end = time.time() + timeout
        while s not in buf:
            r, _, _ = select.select([fd], [], [], max(0, end - time.time()))
            if not r: sys.exit('timeout waiting for %r; got %r' % (s, buf[-400:]))
            try: data = os.read(fd, 4096)
            except OSError: sys.exit('eof waiting for %r; got %r' % (s, buf[-400:]))
            buf += data
    wait_for(b'echo: ready', 60)
    attrs = termios.tcgetattr(fd)
    print('raw-mode', 'yes' if not (attrs[3] & termios.ICANON) and not (attrs[3] & termios.ECHO) else 'no')
    os.write(fd, b'\\x01h'); wait_for(b'C-a x    exit emulator', 10); print('help-shown')
    os.write(fd, b'\\x01x'); wait_for(b'keel: Terminated', 10); print('terminated')
    _, status = os.waitpid(pid, 0)
    print('exit', os.waitstatus_to_exitcode(status))
    """

    func testCtrlAHelpAndQuitOnARealTerminal() throws {
        guard access("/dev/kvm", R_OK | W_OK) == 0 else { throw XCTSkip("no /dev/kvm: the kvm accelerator cannot run here") }
        let guest = try GuestBuilder.shared.image(for: .serialEcho)
        let keel = try KeelRunner.fromEnvironment()
        guard case .keel(let binary) = keel.emulator else {
            throw XCTSkip("KEEL_TEST_EMULATOR names QEMU: the Ctrl-A console test drives Keel itself")
        }
        let r = try KeelRunner.runCommand(executable: "/usr/bin/python3",
                                          arguments: ["-c", Self.driver, binary, "-accel", "kvm", "-m", "64",
                                                      "-kernel", guest.path, "-nographic"],
                                          timeout: 90, input: nil, inputAfter: nil, whileRunning: nil)
        XCTAssertEqual(r.status, 0, "driver failed: \(r.stderr)\n\(r.stdout)")
        XCTAssertTrue(r.lines.contains("raw-mode yes"), "the console must be raw (no echo, no line editing): \(r.stdout)")
        XCTAssertTrue(r.lines.contains("help-shown"), r.stdout)
        XCTAssertTrue(r.lines.contains("terminated"), r.stdout)
        XCTAssertTrue(r.lines.contains("exit 0"), "Ctrl-A x must end Keel with status 0: \(r.stdout)")
    }
}
