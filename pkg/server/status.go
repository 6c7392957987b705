package server

import (
	"github.com/offloadlb/lb/internal/version"
	"github.com/offloadlb/lb/pkg/admin"
)

// Status reports the live state of every listener, pool and backend.
func (s *Server) Status() admin.Status {
	st := admin.Status{Version: version.String(), Started: s.started}
	for _, l := range s.listeners {
		st.Listeners = append(st.Listeners, admin.ListenerStatus{
			Name:              l.cfg.Name,
			Address:           l.ln.Addr().String(),
			Mode:              l.cfg.Mode,
			TLS:               l.term != nil,
			Pool:              l.cfg.Pool,
			ActiveConnections: l.ln.Active(),
		})
	}
	for _, name := range s.order {
		p := s.upstreams[name].Pool
		ps := admin.PoolStatus{Name: p.Name, Algorithm: p.Algorithm, Usable: p.Usable()}
		for _, b := range p.Backends {
			bs := admin.BackendStatus{
				Address:           b.Address,
				Weight:            b.Weight,
				Up:                b.Up(),
				ActiveConnections: b.Active(),
				Requests:          b.Requests(),
				Failures:          b.Failures(),
				LastError:         b.LastError(),
				Since:             b.Changed(),
			}
			switch {
			case b.Drained():
				bs.State = "drained"
			case b.Up():
				bs.State = "up"
			default:
				bs.State = "down"
			}
			if t := b.LastCheck(); !t.IsZero() {
				bs.LastCheck = &t
			}
			ps.Backends = append(ps.Backends, bs)
		}
		st.Pools = append(st.Pools, ps)
	}
	return st
}
