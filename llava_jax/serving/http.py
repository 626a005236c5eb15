"""uvicorn's h11 protocol with a deadline for each request's headers.

uvicorn times out idle keep-alive connections only after a first response: a client that opens
a connection and sends half a request line holds it forever. Here every connection must finish
sending its headers within `header_timeout` seconds of connecting (or of its last response).
The body has its own deadline in the app (`app.read_body`).
"""

from uvicorn.protocols.http.h11_impl import H11Protocol


def timed_h11(header_timeout: float) -> type:
  """An H11Protocol subclass closing connections whose headers do not arrive in time."""

  class TimedH11Protocol(H11Protocol):

    def connection_made(self, transport):
      super().connection_made(transport)
      self._arm()

    def on_response_complete(self):
      super().on_response_complete()
      self._arm()

    def _arm(self):
      self.loop.call_later(header_timeout, self._expire, self.cycle)

    def _expire(self, cycle_at_arm):
      # Still the same (or no) request as when armed, and it is not being served: no headers came.
      waiting = self.cycle is cycle_at_arm and (self.cycle is None or self.cycle.response_complete)
      if waiting and not self.transport.is_closing():
        self.transport.close()

  return TimedH11Protocol
