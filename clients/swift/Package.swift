// swift-tools-version:6.0
// The Arcana Swift client: live views over gRPC (grpc-swift 2).
//
// Sources/Arcana/Generated is produced by ./generate.sh (protoc-gen-swift and
// protoc-gen-grpc-swift-2 through the buf CLI) and is not committed.

import PackageDescription

let package = Package(
  name: "Arcana",
  platforms: [
    .macOS(.v15), .iOS(.v18), .tvOS(.v18), .watchOS(.v11), .visionOS(.v2),
  ],
  products: [
    .library(name: "Arcana", targets: ["Arcana"])
  ],
  dependencies: [
    .package(url: "https://github.com/grpc/grpc-swift-2.git", from: "2.0.0"),
    .package(url: "https://github.com/grpc/grpc-swift-nio-transport.git", from: "2.0.0"),
    .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", from: "2.0.0"),
    .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.28.0"),
  ],
  targets: [
    .target(
      name: "Arcana",
      dependencies: [
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
      ]
    ),
    .testTarget(
      name: "ArcanaTests",
      dependencies: ["Arcana"]
    ),
  ]
)
