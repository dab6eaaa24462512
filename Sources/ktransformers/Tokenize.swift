import ArgumentParser
import Foundation
import Tokenizer

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the token ids (and pieces) of a text.")

    @Option(name: .long, help: "GGUF model file or Hugging Face checkpoint directory (default: the installed default model).")
    var model: String?

    @Option(help: "The text to tokenize.")
    var text: String

    @Flag(name: .customLong("no-bos"), help: "Do not add the BOS (and EOS) tokens the model asks for.")
    var noBOS = false

    @Flag(name: .customLong("no-parse-special"), help: "Treat special-token text such as <start_of_turn> as plain text.")
    var noParseSpecial = false

    @Flag(help: "Print {\"ids\": [...], \"pieces\": [...]} as JSON.")
    var json = false

    func run() throws {
        let file = try LoadOptions(model: model).openSource()
        let tokenizer = try Tokenizer(metadata: file.metadata)
        let ids = tokenizer.encode(text, addSpecial: !noBOS, parseSpecial: !noParseSpecial)
        if json {
            let obj: [String: Any] = ["ids": ids.map(Int.init), "pieces": ids.map { tokenizer.piece($0) }]
            let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys, .withoutEscapingSlashes])
            Output.out(String(decoding: data, as: UTF8.self) + "\n")
        } else {
            for id in ids { Output.out("\(id)\t\(tokenizer.piece(id).debugDescription)\n") }
        }
    }
}
