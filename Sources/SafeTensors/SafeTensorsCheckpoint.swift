import Foundation

/// The tensors of a Hugging Face checkpoint directory: one `model.safetensors`, or the shards that
/// `model.safetensors.index.json` lists (`{"weight_map": {"tensor": "model-00001-of-00004.safetensors", ...}}`),
/// or, with neither, every `*.safetensors` file in the directory. Tensor names are unique across shards.
public final class SafeTensorsCheckpoint: @unchecked Sendable {
    public let directory: String
    public let files: [SafeTensorsFile]
    /// Every tensor name, sorted.
    public let names: [String]
    private let location: [String: (file: Int, info: SafeTensorInfo)]

    public init(directory: String) throws {
        self.directory = directory
        let fm = FileManager.default
        let dir = URL(fileURLWithPath: directory)
        let indexPath = dir.appendingPathComponent("model.safetensors.index.json").path
        var shardNames: [String]
        var weightMap: [String: String]?
        if fm.fileExists(atPath: indexPath) {
            guard let data = fm.contents(atPath: indexPath) else { throw SafeTensorsError(path: indexPath, "cannot read") }
            guard let map = try JSONValue.parse(data, what: indexPath)["weight_map"]?.object else {
                throw SafeTensorsError(path: indexPath, "has no 'weight_map' object")
            }
            var wm: [String: String] = [:]
            for (k, v) in map {
                guard let f = v.string else { throw SafeTensorsError(path: indexPath, "weight_map entry '\(k)' is not a file name") }
                guard !f.contains("/") else { throw SafeTensorsError(path: indexPath, "weight_map entry '\(k)' names a file outside the directory: '\(f)'") }
                wm[k] = f
            }
            weightMap = wm
            shardNames = Array(Set(wm.values)).sorted()
        } else {
            let all = (try? fm.contentsOfDirectory(atPath: directory)) ?? []
            shardNames = all.filter { $0.hasSuffix(".safetensors") }.sorted()
            guard !shardNames.isEmpty else {
                throw SafeTensorsError(path: directory, "no *.safetensors files and no model.safetensors.index.json")
            }
        }
        var files: [SafeTensorsFile] = []
        var loc: [String: (file: Int, info: SafeTensorInfo)] = [:]
        for (i, shard) in shardNames.enumerated() {
            let p = dir.appendingPathComponent(shard).path
            guard fm.fileExists(atPath: p) else {
                throw SafeTensorsError(path: p, "shard listed in model.safetensors.index.json is missing")
            }
            let f = try SafeTensorsFile(path: p)
            files.append(f)
            for t in f.tensors {
                if let prev = loc[t.name] {
                    throw SafeTensorsError(path: p, "tensor '\(t.name)' is also in \(files[prev.file].path)")
                }
                loc[t.name] = (i, t)
            }
        }
        if let weightMap {
            for (name, shard) in weightMap.sorted(by: { $0.key < $1.key }) {
                guard let l = loc[name] else {
                    throw SafeTensorsError(path: dir.appendingPathComponent(shard).path, "tensor '\(name)' listed in model.safetensors.index.json is not in this shard")
                }
                guard files[l.file].path.hasSuffix("/" + shard) else {
                    throw SafeTensorsError(path: files[l.file].path, "tensor '\(name)' is here, but model.safetensors.index.json says \(shard)")
                }
            }
        }
        self.files = files
        self.location = loc
        self.names = loc.keys.sorted()
    }

    public func tensor(named name: String) -> SafeTensorInfo? { location[name]?.info }

    /// The file holding `name`.
    public func file(of name: String) -> SafeTensorsFile? { location[name].map { files[$0.file] } }

    /// Pointer to the data of `name` in its shard's mapping.
    public func data(_ name: String) -> UnsafeRawPointer? {
        guard let l = location[name] else { return nil }
        return files[l.file].data(of: l.info)
    }

    /// The tensor's values decoded to f32.
    public func floats(_ name: String) throws -> [Float] {
        guard let l = location[name] else { throw SafeTensorsError(path: directory, "missing tensor '\(name)'") }
        return try files[l.file].floats(l.info)
    }
}
