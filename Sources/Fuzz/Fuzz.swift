import Accounts
import Foundation

/// `account-server-fuzz TARGET …`: the libFuzzer targets, and their replayer.
///
/// Built by `scripts/fuzz.sh` with `-sanitize=fuzzer,address -DFUZZING`, it is a libFuzzer
/// binary: `account-server-fuzz practitioner [libFuzzer options] CORPUS…`. In a normal build it
/// replays files through the same checks: `account-server-fuzz practitioner FILE…` (exit 1
/// on the first property failure) — that is how a crash file is confirmed fixed.
///
/// Targets (the checks are ``FuzzProperties``, shared with the regression tests):
/// - `practitioner`: FHIR JSON decoding and FrPractitionerRegul validation;
/// - `identifier-query`: the query-string parser and the `identifier` token parser.
@main
struct Fuzz {
    static let targets: [String: @Sendable ([UInt8]) -> String?] = [
        "practitioner": FuzzProperties.practitioner,
        "identifier-query": FuzzProperties.identifierQuery,
    ]

    static func main() {
        var arguments = CommandLine.arguments
        guard arguments.count >= 2, let target = targets[arguments[1]] else {
            FileHandle.standardError.write(Data("usage: account-server-fuzz \(targets.keys.sorted().joined(separator: "|")) [libFuzzer options | files…]\n".utf8))
            exit(2)
        }
        let name = arguments.remove(at: 1)
        #if FUZZING
        var argc = CInt(arguments.count)
        var cStrings = arguments.map { strdup($0) }
        cStrings.append(nil)
        // A C callback cannot capture which target was chosen: one callback per target.
        let callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt = name == "practitioner"
            ? { data, size in check(FuzzProperties.practitioner, data, size) }
            : { data, size in check(FuzzProperties.identifierQuery, data, size) }
        exit(cStrings.withUnsafeMutableBufferPointer { buffer -> CInt in
            var argv = buffer.baseAddress!
            return LLVMFuzzerRunDriver(&argc, &argv, callback)
        })
        #else
        var failures = 0
        for path in arguments.dropFirst() {
            guard let data = FileManager.default.contents(atPath: path) else {
                print("unreadable: \(path)")
                failures += 1
                continue
            }
            if let failure = target(Array(data)) {
                print("FAIL \(path): \(failure)")
                failures += 1
            }
        }
        print("\(arguments.count - 1) input(s) replayed, \(failures) failure(s)")
        exit(failures == 0 ? 0 : 1)
        #endif
    }
}

#if FUZZING
/// One input through one target's properties: a failure is a crash, so libFuzzer saves the
/// input.
func check(_ properties: ([UInt8]) -> String?, _ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size))
    if let failure = properties(bytes) {
        fatalError("property failed: \(failure)")
    }
    return 0
}

/// Only here because the fuzzer runtime's own `main` refers to it; `main` above runs the
/// driver with the chosen target instead, so reaching this means the wrong `main` ran.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneUnselected(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    fatalError("run through account-server-fuzz TARGET, not the fuzzer runtime's main")
}

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt
#endif
