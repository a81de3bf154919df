// The generated arcana.v1 messages and service.
export * from "./gen/arcana/v1/value_pb.js";
export * from "./gen/arcana/v1/view_pb.js";
export * from "./gen/arcana/v1/describe_pb.js";
export * from "./gen/arcana/v1/service_pb.js";
