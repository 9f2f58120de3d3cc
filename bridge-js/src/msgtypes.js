// PostgreSQL protocol message type bytes the front end looks at.

// frontend (client -> server)
export const QUERY = 0x51; // Q
export const PARSE = 0x50; // P
export const BIND = 0x42; // B
export const DESCRIBE = 0x44; // D
export const CLOSE = 0x43; // C
export const EXECUTE = 0x45; // E
export const SYNC = 0x53; // S
export const FLUSH = 0x48; // H
export const TERMINATE = 0x58; // X
export const COPY_DATA = 0x64; // d
export const COPY_DONE = 0x63; // c
export const COPY_FAIL = 0x66; // f

// backend (server -> client)
export const READY = 0x5a; // Z
export const ERROR = 0x45; // E
export const NOTICE = 0x4e; // N
export const NOTIFICATION = 0x41; // A
export const COPY_IN = 0x47; // G
export const COMPLETE = 0x43; // C
export const DATA_ROW = 0x44; // D
export const SUSPENDED = 0x73; // s
export const EMPTY = 0x49; // I
export const PARAMETER_STATUS = 0x53; // S
