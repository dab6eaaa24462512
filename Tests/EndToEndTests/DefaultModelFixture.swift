import Backend
import Foundation
import GGUF
import Models
import XCTest

/// The real default model, loaded once for the whole test target. The tests fail (not skip) when it is
/// missing: `scripts/test.sh` and `.ci/run` install it first.
enum DefaultModelFixture {
    struct Loaded: @unchecked Sendable {
        let file: GGUFFile
        let pool: ThreadPool
        let model: LanguageModel
    }

    static let loaded: Result<Loaded, Error> = Result {
        guard DefaultModel.isInstalled else { throw ModelError(DefaultModel.installHint) }
        let file = try GGUFFile(path: DefaultModel.path, populate: true)
        let pool = ThreadPool(threads: CPUInfo.physicalCores)
        return Loaded(file: file, pool: pool, model: try ModelRegistry.load(file, backend: CPUBackend(pool: pool)))
    }

    static func get() throws -> Loaded { try loaded.get() }

    static func fixtureURL(_ name: String) -> URL {
        Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.appendingPathComponent(name)
    }

    /// Lines of a JSONL fixture as dictionaries.
    static func jsonLines(_ name: String) throws -> [[String: Any]] {
        let text = try String(contentsOf: fixtureURL(name), encoding: .utf8)
        return try text.split(separator: "\n").map {
            try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
        }
    }
}

/// One reference prompt of ref_f64.jsonl: its ids, the float64 forward pass's continuation and per-step top-5.
struct ReferenceCase {
    struct Step {
        let id: Int32
        let top5: [(id: Int32, logprob: Double)]
        var gap: Double { top5[0].logprob - top5[1].logprob }
    }

    let prompt: String
    let promptIDs: [Int32]
    let genIDs: [Int32]
    let steps: [Step]

    static func load() throws -> [ReferenceCase] {
        try DefaultModelFixture.jsonLines("ref_f64.jsonl").map { d in
            let steps = (d["steps"] as! [[String: Any]]).map { s in
                Step(id: Int32(s["id"] as! Int),
                     top5: (s["top5"] as! [[String: Any]]).map { (Int32($0["id"] as! Int), $0["logprob"] as! Double) })
            }
            return ReferenceCase(prompt: d["prompt"] as! String, promptIDs: (d["prompt_ids"] as! [Int]).map(Int32.init),
                                 genIDs: (d["gen_ids"] as! [Int]).map(Int32.init), steps: steps)
        }
    }
}
