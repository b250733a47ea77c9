package delivery

// SetAfterPublish makes r run f between publishing a round's events and
// marking them relayed; an error from f ends the round there, as a crash of
// the relay would.
func SetAfterPublish(r *Relay, f func() error) { r.afterPublish = f }
