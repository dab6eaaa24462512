import Quant

/// Where a model's hyper-parameters and weights come from, seen the GGUF way: metadata under llama.cpp's key
/// names (`general.architecture`, `{arch}.embedding_length`, ...) and tensors under llama.cpp's names
/// (`blk.N.attn_q.weight`, ...) with ggml shapes (innermost dimension first). A `GGUFFile` is one; a Hugging Face
/// checkpoint directory presented through `SafeTensors.HFCheckpoint` is another, so the model code is the same for
/// both.
///
/// A source validates its tensor table when it is opened: `data(of:)` cannot fail, and the pointer stays valid as
/// long as the source lives (weights keep the source alive as their owner).
public protocol TensorSource: AnyObject, Sendable {
    /// The file or directory, for error messages.
    var path: String { get }
    /// Every metadata key and its value.
    var metadata: [String: GGUFValue] { get }
    /// Every tensor (GGUF naming).
    var tensors: [GGUFTensorInfo] { get }
    /// The tensor named `name` (GGUF naming), if any.
    func tensor(named name: String) -> GGUFTensorInfo?
    /// The tensor's data, `info.byteCount` bytes encoded in `info.type`.
    func data(of tensor: GGUFTensorInfo) -> UnsafeRawPointer
}

extension TensorSource {
    public subscript(key: String) -> GGUFValue? { metadata[key] }

    /// `general.architecture`.
    public var architecture: String? { metadata["general.architecture"]?.string }
}

extension GGUFFile: TensorSource {}

extension GGUFTensorInfo {
    /// A tensor of another source's table, which keeps `sourceIndex` in `fileOffset` (for a `GGUFFile` that is
    /// the absolute offset of the data).
    public init(name: String, shape: [Int], type: GGMLType, sourceIndex: Int, byteCount: Int) {
        self.name = name
        self.shape = shape
        self.type = type
        self.fileOffset = sourceIndex
        self.byteCount = byteCount
    }
}
