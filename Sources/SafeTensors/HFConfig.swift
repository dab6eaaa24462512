/// A model's `config.json` (for multimodal checkpoints, its `text_config`), with typed look-ups whose errors name
/// the file and the key, and the RoPE parameters of either transformers generation: `rope_theta` + `rope_scaling`
/// (4.x, and what most checkpoints on the Hub have) or `rope_parameters` (5.x), possibly per layer type.
public struct HFConfig: Sendable {
    public let json: JSONValue
    public let path: String

    public init(json: JSONValue, path: String) {
        self.json = json
        self.path = path
    }

    public subscript(key: String) -> JSONValue? {
        guard let v = json[key], !v.isNull else { return nil }
        return v
    }

    public func int(_ key: String) throws -> Int {
        guard let v = self[key]?.int else { throw SafeTensorsError(path: path, "missing or non-integer '\(key)'") }
        return v
    }

    public func optionalInt(_ key: String) -> Int? { self[key]?.int }

    public func double(_ key: String) throws -> Double {
        guard let v = self[key]?.double else { throw SafeTensorsError(path: path, "missing or non-numeric '\(key)'") }
        return v
    }

    public func optionalDouble(_ key: String) -> Double? { self[key]?.double }

    public func optionalBool(_ key: String) -> Bool? { self[key]?.bool }

    public func optionalString(_ key: String) -> String? { self[key]?.string }

    /// The RoPE settings: `theta`, `type` ("default", "linear", "yarn", "llama3", ...) and the whole parameter
    /// object (`factor`, `original_max_position_embeddings`, ...). `layerType` picks the entry of a per-layer-type
    /// `rope_parameters` (Gemma 3: "full_attention" / "sliding_attention").
    public func rope(layerType: String? = nil, defaultTheta: Double) -> (theta: Double, type: String, params: JSONValue) {
        var params: JSONValue = .object([:])
        if let rp = self["rope_parameters"], let o = rp.object {
            if o["rope_theta"] != nil || o["rope_type"] != nil || o["type"] != nil {
                params = rp
            } else if let layerType, let sub = o[layerType] {
                params = sub
            }
        } else if let rs = self["rope_scaling"], rs.object != nil {
            params = rs
        }
        let theta = params["rope_theta"]?.double ?? optionalDouble("rope_theta") ?? defaultTheta
        let type = params["rope_type"]?.string ?? params["type"]?.string ?? "default"
        return (theta, type, params)
    }
}
