import Glibc

/// Reads a whole host file (kernel, initrd) with plain syscalls. Errors name the file:
/// "kernel /x: No such file or directory".
public func readHostFile(_ path: String, what: String) throws -> [UInt8] {
    let subject = "\(what) \(path)"
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw BootError(.unreadable, subject, String(cString: strerror(errno))) }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0 else { throw BootError(.unreadable, subject, String(cString: strerror(errno))) }
    guard (st.st_mode & S_IFMT) == S_IFREG else {
        let kind = (st.st_mode & S_IFMT) == S_IFDIR ? "is a directory" : "is not a regular file"
        throw BootError(.unreadable, subject, kind)
    }
    // Guest RAM bounds what can be used anyway; refuse absurd sizes before allocating them.
    let limit = Int(1) << 34
    guard st.st_size >= 0, st.st_size <= limit else {
        throw BootError(.unreadable, subject, "file is too large (\(st.st_size) bytes)")
    }
    let size = Int(st.st_size)
    var data = [UInt8](repeating: 0, count: size)
    var done = 0
    while done < size {
        let n = data.withUnsafeMutableBytes { buf in read(fd, buf.baseAddress! + done, size - done) }
        if n < 0 {
            if errno == EINTR { continue }
            throw BootError(.unreadable, subject, String(cString: strerror(errno)))
        }
        if n == 0 { break }   // the file shrank while reading
        done += n
    }
    if done < size { data.removeSubrange(done..<size) }
    return data
}
