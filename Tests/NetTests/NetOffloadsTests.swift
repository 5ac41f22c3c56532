import Net
import XCTest

final class NetOffloadsTests: XCTestCase {
    // The raw values go straight to TUNSETOFFLOAD, so they must be linux/if_tun.h's TUN_F_*.
    func testOffloadBitsMatchTunFlags() {
        XCTAssertEqual(NetOffloads.checksum.rawValue, 0x01)
        XCTAssertEqual(NetOffloads.tso4.rawValue, 0x02)
        XCTAssertEqual(NetOffloads.tso6.rawValue, 0x04)
        XCTAssertEqual(NetOffloads.tsoECN.rawValue, 0x08)
        XCTAssertEqual(NetOffloads.ufo.rawValue, 0x10)
        XCTAssertEqual(NetOffloads([.checksum, .tso4]).rawValue, 0x03)
    }
}
