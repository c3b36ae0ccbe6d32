// vcsim: govmomi's vCenter simulator as a test fixture for veba.
//
// Built from Debian's golang-github-vmware-govmomi-dev by scripts/build-vcsim
// (GOPATH mode, no network). It serves the vSphere SOAP API under /sdk and,
// with the vapi simulator registered, the Automation REST API under /rest.
// When ready it prints its URL (with the default credentials user:pass) on
// stdout and, with -url-file, writes it there too.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"io/ioutil"
	"log"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/signal"
	"reflect"
	"syscall"
	"time"
	"unsafe"

	"github.com/google/uuid"
	"github.com/vmware/govmomi/simulator"
	_ "github.com/vmware/govmomi/vapi/simulator"
	"github.com/vmware/govmomi/vim25"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "HOST:PORT to serve on")
	urlFile := flag.String("url-file", "", "write the URL here once serving")
	useTLS := flag.Bool("tls", false, "serve HTTPS with a new self-signed certificate for 127.0.0.1")
	caFile := flag.String("ca-file", "", "with -tls: write that certificate (PEM) here, to trust it")
	username := flag.String("username", "user", "the one user that may log in")
	password := flag.String("password", "pass", "that user's password")
	keyStart := flag.Int("key-start", 0, "the Key the next event gets, minus one (to test wrap-around)")
	instanceUUID := flag.String("uuid", "", "the vCenter's instance UUID (default: a new random one)")
	vms := flag.Int("vm", 2, "VMs per resource pool / host")
	verbose := flag.Bool("v", false, "log every request")
	flag.Parse()

	if !*verbose {
		log.SetOutput(ioutil.Discard)
	}

	model := simulator.VPX()
	model.Machine = *vms
	if err := model.Create(); err != nil {
		fmt.Fprintln(os.Stderr, "vcsim:", err)
		os.Exit(1)
	}
	// Every simulator is its own vCenter: this version hands out one fixed
	// instance UUID, which would make event ids of two simulators collide.
	if *instanceUUID == "" {
		*instanceUUID = uuid.New().String()
	}
	si := simulator.Map.Get(vim25.ServiceInstance).(*simulator.ServiceInstance)
	si.Content.About.InstanceUuid = *instanceUUID

	model.Service.RegisterEndpoints = true
	// A user other than govmomi's default makes Login check the password.
	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*username, *password)}
	var certPEM []byte
	if *useTLS {
		cert, pemBytes, err := selfSigned()
		if err != nil {
			fmt.Fprintln(os.Stderr, "vcsim: certificate:", err)
			os.Exit(1)
		}
		certPEM = pemBytes
		model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	}
	if *keyStart != 0 {
		setEventKey(simulator.Map.EventManager(), int32(*keyStart))
	}

	server := model.Service.NewServer()
	if *useTLS && *caFile != "" {
		if err := ioutil.WriteFile(*caFile, certPEM, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "vcsim: writing the certificate:", err)
			os.Exit(1)
		}
	}

	address := server.URL.String()
	if *urlFile != "" {
		tmp := *urlFile + ".tmp"
		if err := ioutil.WriteFile(tmp, []byte(address+"\n"), 0o644); err == nil {
			err = os.Rename(tmp, *urlFile)
		}
	}
	fmt.Println(address)

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	<-signals
	// Go down at once, dropping long polls (WaitForUpdatesEx) as a vCenter
	// going down would: server.Close would wait for them to time out.
	server.Listener.Close()
	model.Remove()
	os.Exit(0)
}

// setEventKey sets the EventManager's private key counter: this simulator has
// no option for it, and real vCenters have been seen with keys near (and past)
// the int32 limit.
func setEventKey(m *simulator.EventManager, key int32) {
	field := reflect.ValueOf(m).Elem().FieldByName("key")
	*(*int32)(unsafe.Pointer(field.UnsafeAddr())) = key
}

// selfSigned makes a P-256 certificate for 127.0.0.1 and localhost (the one
// the simulator would use is RSA-1024, which OpenSSL now refuses).
func selfSigned() (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	template := x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "vcsim", Organization: []string{"veba tests"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, &template, &template, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	return cert, certPEM, err
}
