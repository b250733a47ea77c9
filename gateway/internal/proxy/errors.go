package proxy

import (
	"time"

	"github.com/mana/apigw/gateway/internal/apierr"
	"github.com/mana/apigw/gateway/internal/usage"
)

// The edge's own refusals, as the client is told of them; what each is
// written as is looked up in package apierr's table. The key's state
// (revoked, rate limited, out of credits) is refused with quota's errors,
// as the script decided it.
var (
	errNoKey           = apierr.New(apierr.KeyRefused, "missing X-API-Key header")
	errUnknownKey      = apierr.New(apierr.KeyRefused, "unknown API key")
	errKeysUnavailable = apierr.New(apierr.Unavailable, "API keys cannot be checked right now; try again shortly").
				RetryIn(5 * time.Second)
	errTooManyInFlight = apierr.New(apierr.RateLimited, "too many calls of this key in flight; retry when one has finished").
				RetryIn(time.Second)
	errUpgrade        = apierr.New(apierr.Invalid, "protocol upgrades are not supported")
	errCannotRecord   = usage.ErrNotDurable.WithDetail("usage cannot be recorded right now; try again shortly")
	errNoBodyAccepted = apierr.New(apierr.BodyTooLarge, "this endpoint takes no request body")

	// Reading and checking a body.
	errBodyTooLarge   = apierr.New(apierr.BodyTooLarge, "request body too large")
	errNotJSON        = apierr.New(apierr.UnsupportedMedia, "the body must be application/json")
	errBodyUnreadable = apierr.New(apierr.Invalid, "could not read the request body")
	errEmptyJSON      = apierr.New(apierr.Invalid, "malformed JSON body: empty body")
	errNotMultipart   = apierr.New(apierr.UnsupportedMedia, "the body must be multipart/form-data with the audio in field \"file\"")
	errNoBoundary     = apierr.New(apierr.Invalid, "multipart boundary missing")
	errUploadUnread   = apierr.New(apierr.Invalid, "could not read the upload")
	errNoFile         = apierr.New(apierr.Invalid, "multipart field \"file\" is required (and must come within the first 64 KiB)")
	errEmptyFile      = apierr.New(apierr.Invalid, "the file is empty")
	errNotWAV         = apierr.New(apierr.UnsupportedMedia, "the file must be a WAV (RIFF/WAVE) audio file")
	// errAudioUnsupported and errAudioInvalid are told with the parser's reason.
	errAudioUnsupported   = apierr.New(apierr.UnsupportedMedia, "the audio format is not supported")
	errAudioInvalid       = apierr.New(apierr.Unprocessable, "the WAV header is invalid")
	errOpenNeedsLength    = apierr.New(apierr.LengthRequired, "a WAV without a data size needs a Content-Length")
	errBodyTooSlow        = apierr.New(apierr.BodyTimeout, "the request body did not arrive in time; send it faster or in one go")
	errSecondFile         = apierr.New(apierr.Invalid, "the form holds more than one field \"file\"")
	errPartMalformed      = apierr.New(apierr.Invalid, "a part header of the form is malformed")
	errUploadOverDeclared = apierr.New(apierr.Invalid, "the upload is larger than its WAV header declares")
	errUploadCutOff       = apierr.New(apierr.Invalid, "the upload could not be read: its body is malformed or was cut off")

	// The backend call.
	errBackendUnreachable = apierr.New(apierr.BadGateway, "the backend could not be reached")
	errBackendAnswer      = apierr.New(apierr.BadGateway, "the backend's answer could not be metered")
	errBackendTimeout     = apierr.New(apierr.GatewayTimeout, "the backend did not answer in time")
	errCallStopped        = apierr.New(apierr.Stopping, "the gateway is shutting down; nothing was charged, retry the call").
				RetryIn(time.Second)
)

// badInput refuses a request body that the route's parser rejects.
func badInput(detail string) error { return apierr.New(apierr.Invalid, detail) }
