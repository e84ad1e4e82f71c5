// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

/// @title FhirAnchorLog
/// @notice Records signed Merkle-log checkpoints (origin hash, tree size, RFC 9162 root) so that anyone
///         can prove a checkpoint existed no later than the block that recorded it. One transaction per
///         checkpoint; nothing but keccak256(origin), the size and the 32-byte root is ever stored.
/// @dev Several logs may share one contract: every record is keyed by (originHash, root). For each
///      origin the size must strictly grow, and a root can be recorded only once.
///      Permission model: the deployer is the owner and the first writer. The owner adds and removes
///      writers (the accounts the middleware signs with) and hands ownership over in two steps.
///      Compiled for evmVersion paris (no PUSH0) so it runs on Besu/QBFT chains with pre-Shanghai
///      milestones.
contract FhirAnchorLog {
    /// @dev One storage slot: size, block timestamp and block number of the anchoring transaction.
    struct Record {
        uint64 size;
        uint64 timestamp;
        uint64 blockNumber;
    }

    address public owner;
    address public pendingOwner;
    mapping(address writer => bool allowed) public isWriter;
    mapping(bytes32 originHash => uint64 size) public latestSize;
    mapping(bytes32 originHash => mapping(bytes32 root => Record)) private records;

    event Anchored(bytes32 indexed originHash, uint64 size, bytes32 root, uint64 timestamp);
    event WriterSet(address indexed writer, bool allowed);
    event OwnershipTransferStarted(address indexed previousOwner, address indexed newOwner);
    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);

    error NotOwner(address caller);
    error NotWriter(address caller);
    error ZeroAddress();
    error RootAlreadyAnchored(bytes32 originHash, bytes32 root, uint64 size);
    error SizeNotIncreasing(bytes32 originHash, uint64 size, uint64 latestSize);

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        _;
    }

    constructor() {
        owner = msg.sender;
        isWriter[msg.sender] = true;
        emit OwnershipTransferred(address(0), msg.sender);
        emit WriterSet(msg.sender, true);
    }

    /// @notice Records one checkpoint of the log whose origin line hashes to `originHash`.
    /// @param originHash keccak256 of the checkpoint's origin line (UTF-8).
    /// @param size tree size; must be greater than the latest recorded size for this origin (so > 0).
    /// @param root RFC 9162 root hash of the tree at `size`.
    function anchor(bytes32 originHash, uint64 size, bytes32 root) external {
        if (!isWriter[msg.sender]) revert NotWriter(msg.sender);
        Record storage record = records[originHash][root];
        if (record.size != 0) revert RootAlreadyAnchored(originHash, root, record.size);
        uint64 latest = latestSize[originHash];
        if (size <= latest) revert SizeNotIncreasing(originHash, size, latest);
        uint64 timestamp = uint64(block.timestamp);
        records[originHash][root] = Record(size, timestamp, uint64(block.number));
        latestSize[originHash] = size;
        emit Anchored(originHash, size, root, timestamp);
    }

    /// @notice The record for `root` in the log `originHash`; all zero when it was never anchored.
    function recordOf(bytes32 originHash, bytes32 root)
        external
        view
        returns (uint64 size, uint64 timestamp, uint64 blockNumber)
    {
        Record memory record = records[originHash][root];
        return (record.size, record.timestamp, record.blockNumber);
    }

    /// @notice Allows or forbids `writer` to anchor checkpoints.
    function setWriter(address writer, bool allowed) external onlyOwner {
        if (writer == address(0)) revert ZeroAddress();
        isWriter[writer] = allowed;
        emit WriterSet(writer, allowed);
    }

    /// @notice Starts handing ownership to `newOwner`, who must call {acceptOwnership}.
    function transferOwnership(address newOwner) external onlyOwner {
        if (newOwner == address(0)) revert ZeroAddress();
        pendingOwner = newOwner;
        emit OwnershipTransferStarted(owner, newOwner);
    }

    /// @notice Completes a transfer started by {transferOwnership}.
    function acceptOwnership() external {
        if (msg.sender != pendingOwner) revert NotOwner(msg.sender);
        emit OwnershipTransferred(owner, msg.sender);
        owner = msg.sender;
        pendingOwner = address(0);
    }
}
