/* A stand-in for libpcaudio.so.0 (Debian's libpcaudio0 links PulseAudio and ALSA, which the GPU image lacks).
 * espeak-ng --stdout and -w never open an audio device: these entry points only let libespeak-ng.so.1 load, and
 * any attempt to play sound fails cleanly (no device object) instead of crashing. */
#include <stddef.h>
#include <stdint.h>

struct audio_object;

struct audio_object *create_audio_device_object(const char *device, const char *application, const char *description)
{
    (void)device, (void)application, (void)description;
    return NULL;
}

/* EIO: every call reports a failure (there is no device behind it). */
int audio_object_open(struct audio_object *object, int format, uint32_t rate, uint8_t channels)
{
    (void)object, (void)format, (void)rate, (void)channels;
    return 5;
}
void audio_object_close(struct audio_object *object) { (void)object; }
void audio_object_destroy(struct audio_object *object) { (void)object; }
int audio_object_write(struct audio_object *object, const void *data, size_t bytes)
{
    (void)object, (void)data, (void)bytes;
    return 5;
}
int audio_object_drain(struct audio_object *object) { (void)object; return 5; }
int audio_object_flush(struct audio_object *object) { (void)object; return 5; }
const char *audio_object_strerror(struct audio_object *object, int error)
{
    (void)object, (void)error;
    return "no audio output (stub libpcaudio: use --stdout or -w)";
}
