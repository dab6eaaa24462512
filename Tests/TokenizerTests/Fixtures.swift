import Foundation
import GGUF
import Tokenizer
import XCTest

/// Test fixtures and the default model's tokenizer, loaded once.
enum Fixtures {
    static func url(_ name: String) throws -> URL {
        let dir = try XCTUnwrap(Bundle.module.url(forResource: "Fixtures", withExtension: nil), "Fixtures folder missing from the test bundle")
        return dir.appendingPathComponent(name)
    }

    struct TokenizeCase: Decodable {
        let text: String
        let add_bos: Bool
        let parse_special: Bool
        let ids: [Int32]
    }

    static func tokenizeCases() throws -> [TokenizeCase] {
        let data = try Data(contentsOf: url("tokenize.jsonl"))
        return try String(decoding: data, as: UTF8.self).split(separator: "\n").map {
            try JSONDecoder().decode(TokenizeCase.self, from: Data($0.utf8))
        }
    }

    /// The default model's tokenizer, or the reason it is unavailable.
    static let gemma: Result<Tokenizer, any Error> = Result {
        guard DefaultModel.isInstalled else {
            throw TokenizerError("default model not found at \(DefaultModel.path): run scripts/default-model.sh to install it")
        }
        return try Tokenizer(gguf: GGUFFile(path: DefaultModel.path))
    }

    static func gemmaTokenizer(file: StaticString = #filePath, line: UInt = #line) throws -> Tokenizer {
        switch gemma {
        case .success(let t): return t
        case .failure(let e):
            XCTFail("\(e)", file: file, line: line)
            throw e
        }
    }
}
