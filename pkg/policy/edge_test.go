package policy

import "github.com/offloadlb/lb/internal/edge"

// edgeCheck is what the config checks of a response_set rule.
func edgeCheck(name, value string) error {
	if err := edge.CheckRuleField(name, false); err != nil {
		return err
	}
	return edge.CheckRuleValue(value)
}
