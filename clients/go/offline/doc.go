// Package offline keeps a device's own copy of the synced tables in a local
// SQLite file and syncs it with an Arcana server's OfflineService.
package offline
