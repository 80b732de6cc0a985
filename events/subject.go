package events

import (
	"fmt"
	"strings"
)

// SubjectPrefix is the first token of every sluice subject.
const SubjectPrefix = "sluice"

// MaxRegionLen bounds a region name.
const MaxRegionLen = 32

// ValidateRegion checks a region name, e.g. "osc-fr1": 1 to 32 of [a-z0-9-],
// not starting or ending with '-'.
func ValidateRegion(region string) error {
	if !isToken(region, MaxRegionLen) {
		return fmt.Errorf("%w: region %q: want 1 to %d of [a-z0-9-], not starting or ending with '-'", ErrInvalid, region, MaxRegionLen)
	}
	return nil
}

// Subject returns the subject that carries aspect of app in region:
// "sluice.<region>.app.<app>.<aspect>".
func Subject(region, app string, aspect Aspect) string {
	return SubjectPrefix + "." + region + ".app." + app + "." + string(aspect)
}

// RegionSubjects returns the wildcard that matches every app subject of
// region.
func RegionSubjects(region string) string {
	return SubjectPrefix + "." + region + ".app.*.*"
}

// RoutersSubject returns the subject on which the routers of region announce
// themselves (plain NATS, not kept in the stream): "sluice.<region>.routers".
func RoutersSubject(region string) string {
	return SubjectPrefix + "." + region + ".routers"
}

// StreamName returns the name of the JetStream stream that keeps the events
// of region.
func StreamName(region string) string { return "sluice-" + region }

// ParseSubject splits an app subject into its region, app and aspect.
func ParseSubject(subject string) (region, app string, aspect Aspect, err error) {
	t := strings.Split(subject, ".")
	if len(t) != 5 || t[0] != SubjectPrefix || t[2] != "app" {
		return "", "", "", fmt.Errorf("%w: subject %q: want %s.<region>.app.<app>.<aspect>", ErrInvalid, subject, SubjectPrefix)
	}
	if err := ValidateRegion(t[1]); err != nil {
		return "", "", "", err
	}
	if err := ValidateApp(t[3]); err != nil {
		return "", "", "", err
	}
	switch a := Aspect(t[4]); a {
	case AspectContainers, AspectDomains, AspectDelete:
		return t[1], t[3], a, nil
	}
	return "", "", "", fmt.Errorf("%w: subject %q: unknown aspect %q", ErrInvalid, subject, t[4])
}
