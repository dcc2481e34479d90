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
        selected = target
        arguments.remove(at: 1)
        #if FUZZING
        var argc = CInt(arguments.count)
        var cStrings = arguments.map { strdup($0) }
        cStrings.append(nil)
        exit(cStrings.withUnsafeMutableBufferPointer { buffer -> CInt in
            var argv = buffer.baseAddress!
            return LLVMFuzzerRunDriver(&argc, &argv, fuzzOne)
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

    nonisolated(unsafe) static var selected: (([UInt8]) -> String?)?
}

#if FUZZING
/// libFuzzer's entry point: a property failure is a crash, so libFuzzer saves the input.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size))
    if let failure = Fuzz.selected?(bytes) {
        fatalError("property failed: \(failure)")
    }
    return 0
}

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt
#endif
